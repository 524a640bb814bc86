"""The small discord.py bot the emulator's own tests (tests/sandbox) run against it.

The ``sandbox_bot`` fixture logs one in to the ``emulator`` fixture and waits for its commands.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import discord
import pytest_asyncio
from discord import app_commands
from discord.ext import commands

from sandbox import DiscordEmulator

Action = Callable[[discord.Interaction], Awaitable[None]]
FLAVOURS = ["cherry", "chocolate", "vanilla"]


class CounterButton(discord.ui.DynamicItem[discord.ui.Button], template=r"count:(?P<n>\d+)"):
    """Each click edits the message to show the next number, with a fresh custom_id."""

    def __init__(self, n: int) -> None:
        super().__init__(discord.ui.Button(label=f"clicked {n}", custom_id=f"count:{n}"))
        self.n = n

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(int(match["n"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        view = discord.ui.View()
        view.add_item(CounterButton(self.n + 1))
        await interaction.response.edit_message(content=f"count {self.n + 1}", view=view)


class Form(discord.ui.Modal, title="Describe"):
    field: discord.ui.TextInput[Form] = discord.ui.TextInput(label="Prompt", custom_id="prompt",
                                                           max_length=50)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"got {self.field.value}")


class SandboxBot(commands.Bot):
    def __init__(self, intents: discord.Intents | None = None) -> None:
        super().__init__(command_prefix="!", intents=intents or discord.Intents.default(),
                         guild_ready_timeout=0.05)
        self.action: Action | None = None
        self.errors: list[discord.HTTPException] = []
        self.finished = asyncio.Event()

        @app_commands.command(description="Runs the test's action")
        async def run(interaction: discord.Interaction, case: str = "") -> None:
            try:
                assert self.action is not None
                await self.action(interaction)
            except discord.HTTPException as error:
                self.errors.append(error)
            finally:
                self.finished.set()

        @app_commands.command(description="Pick a flavour")
        async def pick(interaction: discord.Interaction, flavour: str, scoops: int = 1) -> None:
            await interaction.response.send_message(f"{scoops} {flavour}")

        @pick.autocomplete("flavour")
        async def flavours(interaction: discord.Interaction, current: str):
            return [app_commands.Choice(name=f, value=f) for f in FLAVOURS if f.startswith(current)]

        @app_commands.command(description="Reports an uploaded file's size")
        async def measure(interaction: discord.Interaction, image: discord.Attachment) -> None:
            data = await image.read()
            await interaction.response.send_message(f"{image.filename} has {len(data)} bytes")

        credits = app_commands.Group(name="credits", description="Credits")

        @credits.command(description="Shows a balance")
        async def balance(interaction: discord.Interaction, who: discord.User) -> None:
            await interaction.response.send_message(f"{who.name} has 5", ephemeral=True)

        command: app_commands.Command | app_commands.Group
        for command in (run, pick, measure, credits):
            self.tree.add_command(command)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """No 5 s pause before re-identifying: there is no identify rate limit locally."""

    async def setup_hook(self) -> None:
        self.add_dynamic_items(CounterButton)
        await self.tree.sync()


async def run_action(emulator: DiscordEmulator, bot: SandboxBot, action: Action, user=None):
    """Slash /run with ``action`` and wait until the bot's handler has finished."""
    bot.action, bot.errors = action, []
    bot.finished.clear()
    record = await emulator.slash(user or emulator.add_user(name="alice"), "run")
    await asyncio.wait_for(bot.finished.wait(), 10)
    return record


@pytest_asyncio.fixture(loop_scope="module")
async def sandbox_bot(emulator: DiscordEmulator) -> AsyncIterator[SandboxBot]:
    """A SandboxBot logged in to ``emulator``, with its commands synced; closed afterwards."""
    client = SandboxBot()
    task = asyncio.create_task(client.start(emulator.token))
    await emulator.wait_until_ready()
    await emulator.wait_for_commands("run", "pick")
    yield client
    await client.close()
    await asyncio.wait_for(task, 5)
