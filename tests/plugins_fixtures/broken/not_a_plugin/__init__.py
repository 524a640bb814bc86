"""A package with neither ``plugin`` nor ``setup()``."""
