"""The persistent, fair job queue: rows in the database, round-robin across users."""
