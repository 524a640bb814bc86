"""A plugin whose settings would shadow a core setting."""
