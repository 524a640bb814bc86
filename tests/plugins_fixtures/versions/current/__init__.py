from bot.plugin_api import API_VERSION, Plugin

plugin = Plugin(name="current", api_versions=range(API_VERSION, API_VERSION + 1))
