from discord.ext import commands

from bot.plugin_api import Plugin


class FailingCog(commands.Cog):
    async def cog_load(self) -> None:
        raise RuntimeError("cog refused to load")


plugin = Plugin(name="cog_fails", cogs=[lambda bot: FailingCog()])
