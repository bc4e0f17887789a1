"""Alembic environment: migrates the URL given by ``dox db upgrade`` or the settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from dox_tasks.db.engine import normalize_url
from dox_tasks.db.models import Base

config = context.config


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return str(url)
    from dox_tasks.settings import load

    return load().db_url


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(normalize_url(_url()))  # `alembic upgrade head` from a checkout
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
