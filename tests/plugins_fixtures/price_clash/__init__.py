"""A plugin that prices the upscale plugin's operation again."""
