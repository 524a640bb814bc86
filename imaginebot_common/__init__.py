"""What the engine, the ledger and the plugins share, and may not take from one another.

The import contracts keep the engine out of the bot and the ledger out of the engine, so the
little that all three need (how settings are read) lives here, in a leaf package that imports
nothing of the project.
"""
