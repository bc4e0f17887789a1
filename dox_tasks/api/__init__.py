"""DOX's HTTP API (FastAPI): the app, its key check, its problem documents and its routes."""
