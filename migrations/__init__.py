"""Alembic migrations; run through bot.database.upgrade, which configures Alembic in code."""
