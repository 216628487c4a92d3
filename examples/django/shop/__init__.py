"""A small Django app on Larder: cache, login sessions and a rate-limited endpoint."""
