"""Core slash commands and their cogs, loaded as extensions by bot.app."""
