from bot.plugin_api import Plugin

plugin = Plugin(name="cheap-upscale", prices={"upscale": lambda bot, request: 0})
