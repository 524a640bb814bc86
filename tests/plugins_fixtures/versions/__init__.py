"""A plugin written for a later plugin API, and one written for this one."""
