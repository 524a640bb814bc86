"""The demo model: synthetic shapes dataset, its trainer, an image checker and evaluation."""
