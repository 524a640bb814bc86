from bot.plugin_api import API_VERSION, Plugin

plugin = Plugin(name="future", api_versions=range(API_VERSION + 1, API_VERSION + 3))
