"""WSGI entry point: gunicorn shop.wsgi:app."""

from shop import create_app

app = create_app()
