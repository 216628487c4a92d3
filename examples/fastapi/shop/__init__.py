"""A small FastAPI app on Larder: cache, login sessions and a rate-limited endpoint."""
