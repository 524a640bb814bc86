"""Alembic environment: always runs on a connection handed over in config.attributes.

The bot migrates from inside a running event loop, so it opens the connection itself (an
async engine, ``run_sync``) and shares it here instead of letting Alembic create an engine.
"""

from __future__ import annotations

from alembic import context

from bot.database import import_models

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through bot.database.upgrade or `imaginebot db upgrade`")

context.configure(
    connection=connection,
    target_metadata=import_models(),
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
