"""Plugins for the plugin tests: broken ones, clashing ones, and ones that show ordering."""
