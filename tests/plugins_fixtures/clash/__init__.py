"""Two plugins that claim the same custom_id namespace."""
