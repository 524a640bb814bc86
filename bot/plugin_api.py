"""The one module plugin authors import from the bot: everything a plugin declares and calls.

A plugin is a package under ``plugins/`` (or any installed distribution in the entry-point group
``imaginebot.plugins``) whose module exposes ``plugin: Plugin`` or ``def setup() -> Plugin``.
It may add result buttons, slash commands, engine operations, prices and its own settings; see
docs/plugins.md. Besides this module, plugins import only the engine's public modules
(``engine.request``, ``engine.operations``, ``engine.outputs``), so core code can change behind
this surface. The loader that finds plugins is private: ``bot._plugin_registry``.

Plugins never see database rows: every hook gets a :class:`JobView`, a frozen snapshot of the
job, so a plugin can neither change a job behind the queue's back nor depend on its columns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from bot import generation
from bot.checks import CheckFailure, admin_only, refuse
from bot.incidents import report_unexpected
from bot.pricing import cost_for, img2img_steps
from engine.operations import PluginSettings
from engine.request import GenerationRequest

if TYPE_CHECKING:
    # At run time ``Bot`` is resolved on first use (``__getattr__`` below): bot.app imports
    # the loader, which imports this module.
    from bot.app import ImagineBot as Bot
    from bot.jobs.models import Job

__all__ = [
    "API_VERSION",
    "ActionCallback",
    "AppCommand",
    "Bot",
    "CheckFailure",
    "CogFactory",
    "GenerationRequest",
    "JobView",
    "OperationPriceFn",
    "Plugin",
    "PluginSettings",
    "PriceFn",
    "ResultAction",
    "VisibleFn",
    "admin_only",
    "cost_for",
    "img2img_steps",
    "plugin_settings",
    "refuse",
    "report_unexpected",
    "start_generation",
]

#: This API's version. A plugin may declare the versions it works with (``Plugin.api_versions``);
#: the loader refuses it on any other. Raised whenever a release changes what plugins see.
API_VERSION = 1

S = TypeVar("S", bound=PluginSettings)


@dataclass(frozen=True, slots=True)
class JobView:
    """A read-only snapshot of one job, as every plugin hook receives it.

    ``seeds`` and ``image_paths`` are empty until the engine has finished the job;
    ``image_count`` is the number of images the job has (or will have).
    """

    id: str
    #: What the result is ("imagine", "upscale", ...); picks the buttons of its message.
    kind: str
    #: The Discord user who started the job and paid for it.
    owner_id: int
    #: The validated request (seed drawn, sizes snapped); frozen too.
    request: GenerationRequest
    image_paths: tuple[Path, ...]
    seeds: tuple[int, ...]
    image_count: int
    #: The job whose button started this one, if any.
    parent_job_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, job: Job) -> JobView:
        """The view of a job row (core code makes these; plugins only receive them)."""
        return cls(id=job.id, kind=job.kind, owner_id=job.owner_id, request=job.request,
                   image_paths=tuple(job.image_paths), seeds=tuple(job.seeds),
                   image_count=job.image_count, parent_job_id=job.parent_job_id,
                   created_at=job.created_at)


ActionCallback = Callable[["Bot", discord.Interaction[Any], JobView, int], Awaitable[None]]
PriceFn = Callable[["Bot", JobView], int]
OperationPriceFn = Callable[["Bot", GenerationRequest], int]
VisibleFn = Callable[["Bot", JobView], bool]
CogFactory = Callable[["Bot"], commands.Cog]
AppCommand = app_commands.Command[Any, ..., Any] | app_commands.Group


@dataclass(frozen=True)
class ResultAction:
    """A button on result messages of some job kinds.

    ``callback(bot, interaction, job, index)`` runs on click with the job read from the database
    and the image index (0 unless ``per_image``). It typically calls :func:`start_generation`,
    which charges the generation itself, so such actions keep ``price`` at 0. A non-zero
    ``price`` (credits, or ``price(bot, job)``) is held from the clicking user's balance before
    the callback, captured when it returns and released when it raises.
    """

    key: str
    callback: ActionCallback
    label: str | None = None
    emoji: str | None = None
    style: discord.ButtonStyle = discord.ButtonStyle.secondary
    row: int = 0
    order: int = 0
    #: One button per image, ``{n}`` in the label being the 1-based image number (``"U{n}"``).
    per_image: bool = False
    #: Job kinds whose result messages show this button.
    kinds: frozenset[str] = frozenset({"imagine"})
    price: int | PriceFn = 0
    #: ``visible(bot, job)``: whether this job's message shows the button at all (e.g. no
    #: "Upscale" at the largest size); None shows it always. A predicate that raises hides the
    #: button and is logged.
    visible: VisibleFn | None = None

    def label_for(self, index: int) -> str | None:
        if self.label is None:
            return None
        return self.label.replace("{n}", str(index + 1)) if self.per_image else self.label

    def cost(self, bot: Bot, job: JobView) -> int:
        return self.price(bot, job) if callable(self.price) else self.price


@dataclass(frozen=True)
class Plugin:
    """Everything one plugin contributes; ``namespace`` defaults to ``name``."""

    name: str
    actions: Sequence[ResultAction] = ()
    cogs: Sequence[CogFactory] = ()
    commands: Sequence[AppCommand] = ()
    #: Modules the engine worker imports at start; they register ``@operation("name")`` s.
    operation_modules: Sequence[str] = ()
    namespace: str = ""
    #: One line for admins, logged when the plugin is found.
    description: str = ""
    #: The plugin's settings, read at load from ``IMAGINEBOT_<NAMESPACE>_*``; its
    #: ``namespace`` must be the plugin's. Invalid values refuse the plugin with one log line.
    settings: type[PluginSettings] | None = None
    #: The versions of this API the plugin works with (``range(1, 3)``: 1 and 2); None: any.
    api_versions: range | None = None
    #: What a job of each of the plugin's engine operations costs, by operation name:
    #: ``price(bot, request)`` in credits, asked with the validated request before it is queued,
    #: so the queued message shows it. Price what the operation makes (output pixels × the
    #: steps it runs, with ``cost_for``), including any remake it needs. An operation without
    #: one is priced as a txt2img of its request.
    prices: Mapping[str, OperationPriceFn] = field(default_factory=dict)

    @property
    def ns(self) -> str:
        return self.namespace or default_namespace(self.name)

    def action(self, key: str) -> ResultAction | None:
        return next((action for action in self.actions if action.key == key), None)


def default_namespace(name: str) -> str:
    """A plugin's namespace when it declares none: its name, with ``-`` turned into ``_``."""
    return name.replace("-", "_")


def plugin_settings(bot: Bot, cls: type[S]) -> S:
    """The instance of ``cls`` the loader read when it loaded the plugin that declares it.

    Engine operations, which run in the worker, use ``OperationContext.plugin_settings``.
    """
    return bot.plugins.settings_for(cls)


async def start_generation(bot: Bot, interaction: discord.Interaction[Any],
                           request: GenerationRequest, *, action: str, kind: str = "imagine",
                           parent_job_id: str | None = None) -> JobView | None:
    """The one flow every generating action goes through: defer, check, validate, charge
    ``{action}:{interaction id}``, queue, show progress and deliver.

    ``kind`` names what the result is, which picks the buttons of its message. Returns the
    queued job, or None when the request was refused (the user has been told why and nothing
    is charged).
    """
    job = await generation.start_generation(bot, interaction, request, action=action,
                                            kind=kind, parent_job_id=parent_job_id)
    return None if job is None else JobView.of(job)


if not TYPE_CHECKING:
    def __getattr__(name: str) -> Any:
        if name == "Bot":
            from bot.app import ImagineBot

            return ImagineBot
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
