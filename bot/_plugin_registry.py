"""The plugin loader: finds, validates and installs plugins, and builds their buttons.

Private to core code (bot/app.py and friends); plugins see only :mod:`bot.plugin_api`. Core
code finds plugins only through this module, which imports them by name, so nothing in ``bot``
depends on a particular plugin.

Buttons are :class:`discord.ui.DynamicItem` s whose custom_id ``{namespace}:{action}:{job}:{index}``
carries everything needed, and the job is read back from the database on every click, so buttons
keep working after a restart. A plugin that fails to load, or raises, is logged and isolated: its
buttons answer with a clear ephemeral message and the rest of the bot carries on.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import pkgutil
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import discord
from discord import app_commands
from pydantic import ValidationError

from bot.checks import CheckFailure, refuse
from bot.incidents import report_unexpected
from bot.ledger import InsufficientCredits
from bot.plugin_api import (
    API_VERSION,
    AppCommand,
    JobView,
    Plugin,
    PluginSettings,
    ResultAction,
    default_namespace,
)

if TYPE_CHECKING:
    from bot.app import ImagineBot
    from bot.jobs.models import Job
    from bot.settings import Settings
    from engine.request import GenerationRequest

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "imaginebot.plugins"
#: Namespaces core code uses for its own buttons (e.g. "core:cancel:{job_id}").
RESERVED_NAMESPACES = frozenset({"core"})
#: The operation the bot prices itself (bot.generation.price); plugins price their own.
CORE_OPERATION = "txt2img"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
NAMESPACE_RE = re.compile(r"[a-z][a-z0-9_]{0,19}")
ACTION_KEY_RE = re.compile(r"[a-z0-9_]{1,16}")
JOB_ID_RE = r"[A-Za-z0-9_-]{1,40}"
MAX_CUSTOM_ID = 100
MAX_LABEL = 80
ROWS = 5
ROW_WIDTH = 5

ButtonClass = type[discord.ui.DynamicItem[discord.ui.Button[Any]]]
S = TypeVar("S", bound=PluginSettings)


class PluginError(Exception):
    """A plugin that cannot be used; the message says why, for the log."""


def custom_id(namespace: str, key: str, job_id: str, index: int) -> str:
    return f"{namespace}:{key}:{job_id}:{index}"


def validate_plugin(plugin: Any) -> Plugin:
    """Refuse at load what would break later: bad names, custom_ids, labels, rows, modules."""
    if not isinstance(plugin, Plugin):
        raise PluginError(f"expected a Plugin, got {type(plugin).__name__}")
    if plugin.api_versions is not None and API_VERSION not in plugin.api_versions:
        raise PluginError(f"it works with plugin API versions {_versions(plugin.api_versions)} "
                          f"and this bot has version {API_VERSION}")
    if not NAME_RE.fullmatch(plugin.name):
        raise PluginError(f"bad plugin name {plugin.name!r} (use a-z, 0-9, _ and -)")
    if not NAMESPACE_RE.fullmatch(plugin.ns) or plugin.ns in RESERVED_NAMESPACES:
        raise PluginError(f"bad namespace {plugin.ns!r} (a-z first, then a-z, 0-9, _; at most "
                          f"20; not {', '.join(sorted(RESERVED_NAMESPACES))})")
    keys = [action.key for action in plugin.actions]
    if len(keys) != len(set(keys)):
        raise PluginError(f"action keys repeat: {keys}")
    for action in plugin.actions:
        _validate_action(plugin.ns, action)
    if not all(callable(factory) for factory in plugin.cogs):
        raise PluginError("cogs must be Cog classes or functions of the bot returning a Cog")
    if not all(isinstance(command, app_commands.Command | app_commands.Group)
               for command in plugin.commands):
        raise PluginError("commands must be app_commands commands or groups")
    for module in plugin.operation_modules:
        if not _module_exists(module):
            raise PluginError(f"operation module {module!r} cannot be found")
    if plugin.settings is not None:
        _validate_settings(plugin.ns, plugin.settings)
    _validate_prices(plugin)
    return plugin


def _validate_prices(plugin: Plugin) -> None:
    for name, price in plugin.prices.items():
        if not isinstance(name, str) or not name or name == CORE_OPERATION:
            raise PluginError(f"bad priced operation {name!r} (a name; {CORE_OPERATION!r} is "
                              "priced by the bot)")
        if not callable(price):
            raise PluginError(f"the price of operation {name!r} is not callable")


def _versions(versions: range) -> str:
    if len(versions) == 0:
        return "(none)"
    first, last = versions[0], versions[-1]
    return str(first) if first == last else f"{first}-{last}"


def _validate_settings(namespace: str, model: Any) -> None:
    if not (isinstance(model, type) and issubclass(model, PluginSettings)):
        raise PluginError("settings must be a PluginSettings subclass")
    if model.namespace != namespace:
        raise PluginError(f"settings {model.__name__} have namespace {model.namespace!r}; "
                          f"they must have the plugin's, {namespace!r}")


def _validate_action(namespace: str, action: ResultAction) -> None:
    if not ACTION_KEY_RE.fullmatch(action.key):
        raise PluginError(f"bad action key {action.key!r} (1-16 of a-z, 0-9, _)")
    longest = custom_id(namespace, action.key, "x" * 40, 24)
    if len(longest) > MAX_CUSTOM_ID:
        raise PluginError(f"custom_id {longest!r} would exceed {MAX_CUSTOM_ID} characters")
    if not callable(action.callback):
        raise PluginError(f"action {action.key!r} has no callable callback")
    if not action.label and not action.emoji:
        raise PluginError(f"action {action.key!r} needs a label or an emoji")
    label = action.label_for(24) or ""
    if len(label) > MAX_LABEL:
        raise PluginError(f"action {action.key!r}: label longer than {MAX_LABEL} characters")
    if action.style in (discord.ButtonStyle.link, discord.ButtonStyle.premium):
        raise PluginError(f"action {action.key!r}: link and premium buttons cannot be dynamic")
    if not 0 <= action.row < ROWS:
        raise PluginError(f"action {action.key!r}: row must be 0-{ROWS - 1}")
    if isinstance(action.price, int) and action.price < 0:
        raise PluginError(f"action {action.key!r}: negative price")


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def plugin_from_module(module: Any) -> Plugin:
    """``plugin`` attribute, ``setup()`` function, a Plugin itself, or a factory returning one."""
    if isinstance(module, Plugin):
        return validate_plugin(module)
    if isinstance(module, ModuleType):
        if hasattr(module, "plugin"):
            return validate_plugin(module.plugin)
        if callable(getattr(module, "setup", None)):
            return validate_plugin(module.setup())
        raise PluginError(f"module {module.__name__} has neither `plugin` nor `setup()`")
    if callable(module):
        return validate_plugin(module())
    raise PluginError(f"entry point gave {type(module).__name__}, not a plugin")


@dataclass
class _Candidate:
    name: str
    origin: str
    load: Callable[[], Any]


@dataclass
class PluginRegistry:
    """Finds, validates and installs plugins; builds result views and the DynamicItem classes.

    Discovery (importing plugin modules) happens once, on first use, so the bot can ask for
    ``operation_modules()`` before starting the engine and install cogs later with ``load``.
    """

    settings: Settings
    packages: Sequence[str] = ("plugins",)
    #: None: no installed distributions, only ``packages`` (the README's settings table).
    entry_point_group: str | None = ENTRY_POINT_GROUP
    #: Usable plugins by namespace, in discovery order.
    plugins: dict[str, Plugin] = field(default_factory=dict, init=False)
    #: Plugins that could not be used: name -> reason (also logged).
    failed: dict[str, str] = field(default_factory=dict, init=False)
    #: Names skipped because settings.plugins_disabled lists them.
    disabled: set[str] = field(default_factory=set, init=False)
    #: The bot ``load`` installed the plugins in; the hooks of result actions receive it.
    bot: ImagineBot | None = field(default=None, init=False)
    _discovered: bool = field(default=False, init=False)
    #: Each usable plugin's settings, read once at discovery, by their class.
    _settings: dict[type[PluginSettings], PluginSettings] = field(default_factory=dict,
                                                                  init=False)
    #: Namespace (or its best guess) of each unusable plugin -> what its buttons answer.
    _unavailable: dict[str, str] = field(default_factory=dict, init=False)
    _items: dict[str, ButtonClass] = field(default_factory=dict, init=False)
    _fallback: ButtonClass | None = field(default=None, init=False)

    # -- discovery --------------------------------------------------------------------------------

    def discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        off = set(self.settings.plugins_disabled)
        seen_modules: set[str] = set()
        for candidate in self._candidates(seen_modules):
            if candidate.name in off:
                self._disable(candidate.name, default_namespace(candidate.name))
                continue
            try:
                plugin = plugin_from_module(candidate.load())
            except Exception as error:
                self._fail(candidate.name, f"{candidate.origin}: {error}", error,
                           default_namespace(candidate.name))
                continue
            if plugin.name in off:
                self._disable(plugin.name, plugin.ns)
                continue
            if plugin.ns in self.plugins:
                self._fail(plugin.name, f"{candidate.origin}: namespace {plugin.ns!r} is already "
                           f"used by plugin {self.plugins[plugin.ns].name!r}")
                continue
            priced = sorted(set(plugin.prices) & self._priced())
            if priced:
                self._fail(plugin.name, f"{candidate.origin}: another plugin already prices "
                           f"operation {priced[0]!r}", namespace=plugin.ns)
                continue
            try:
                self._read_settings(plugin)
            except PluginError as error:
                self._fail(plugin.name, f"{candidate.origin}: {error}", error, plugin.ns)
                continue
            self.plugins[plugin.ns] = plugin
            log.info("plugin %s found (%s)%s", plugin.name, candidate.origin,
                     f": {plugin.description}" if plugin.description else "")

    def _candidates(self, seen_modules: set[str]) -> Iterator[_Candidate]:
        for package_name in self.packages:
            try:
                package = importlib.import_module(package_name)
            except Exception as error:
                self._fail(package_name, f"package {package_name}: {error}", error)
                continue
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
                if info.ispkg:
                    module_name = f"{package_name}.{info.name}"
                    seen_modules.add(module_name)
                    yield _Candidate(info.name, f"package {module_name}",
                                     functools.partial(importlib.import_module, module_name))
        if self.entry_point_group is None:
            return
        for entry_point in importlib.metadata.entry_points(group=self.entry_point_group):
            if entry_point.module in seen_modules:
                continue  # an installed copy of a package found above
            dist = entry_point.dist.name if entry_point.dist else "?"
            yield _Candidate(entry_point.name, f"entry point {entry_point.value} ({dist})",
                             entry_point.load)

    def _read_settings(self, plugin: Plugin) -> None:
        """Read the plugin's settings now, so a bad value refuses it at start, not on a click."""
        model = plugin.settings
        if model is None:
            return
        core = type(self.settings).model_fields
        taken = [name for name in model.model_fields if f"{model.namespace}_{name}" in core]
        if taken:
            raise PluginError(f"setting {model.variable(taken[0])} is already a core setting")
        try:
            self._settings[model] = model()
        except ValidationError as error:
            raise PluginError(model.describe_invalid_setting(error)) from None

    def _disable(self, name: str, namespace: str) -> None:
        self.disabled.add(name)
        self._unavailable.setdefault(namespace, "This feature has been turned off on this bot.")
        log.info("plugin %s is disabled in settings", name)

    def _fail(self, name: str, reason: str, error: BaseException | None = None,
              namespace: str | None = None) -> None:
        self.failed[name] = reason
        if namespace is not None:
            self._unavailable.setdefault(namespace, (
                "This feature is unavailable right now: it failed to start. The bot's "
                "administrators can find the reason in the log."))
        quiet = error is None or isinstance(error, PluginError)
        log.error("plugin %s cannot be used: %s", name, reason, exc_info=None if quiet else error)

    # -- what core asks for -----------------------------------------------------------------------

    def settings_for(self, model: type[S]) -> S:
        """The settings a loaded plugin declared (``bot.plugin_api.plugin_settings``)."""
        found = self._settings.get(model)
        if not isinstance(found, model):
            raise LookupError(f"no loaded plugin declares the settings {model.__name__}")
        return found

    def settings_models(self) -> list[type[PluginSettings]]:
        """The settings classes of the usable plugins, in discovery order."""
        self.discover()
        return [plugin.settings for plugin in self.plugins.values() if plugin.settings]

    def _priced(self) -> set[str]:
        return {name for plugin in self.plugins.values() for name in plugin.prices}

    def price_for(self, bot: ImagineBot, request: GenerationRequest) -> int | None:
        """What the plugin that prices ``request.operation`` charges for it; None: no plugin
        does (the bot then prices it as a txt2img of the request)."""
        self.discover()
        for plugin in self.plugins.values():
            price = plugin.prices.get(request.operation)
            if price is not None:
                return price(bot, request)
        return None

    def operation_modules(self) -> list[str]:
        self.discover()
        return [module for plugin in self.plugins.values() for module in plugin.operation_modules]

    def dynamic_items(self) -> list[ButtonClass]:
        """One class per plugin namespace, plus one that answers for unavailable plugins."""
        self.discover()
        if self._fallback is None:
            self._fallback = _unavailable_class(self)
        return [*(self._item_class(ns) for ns in self.plugins), self._fallback]

    def _item_class(self, namespace: str) -> ButtonClass:
        if namespace not in self._items:
            self._items[namespace] = _button_class(self, namespace)
        return self._items[namespace]

    async def load(self, bot: ImagineBot) -> None:
        """Install each plugin's cogs and commands; one that fails is removed again, whole."""
        self.discover()
        self.bot = bot
        for namespace, plugin in list(self.plugins.items()):
            try:
                await _install(bot, plugin)
            except Exception as error:
                del self.plugins[namespace]
                self._fail(plugin.name, f"setup failed: {error}", error, namespace)

    def result_view(self, record: Job) -> discord.ui.View:
        """The job's buttons: declared rows in order, each split into rows of five, at most five."""
        self.discover()
        job = JobView.of(record)
        entries = sorted(
            ((action.row, action.order, plugin.name, position, plugin.ns, action)
             for plugin in self.plugins.values()
             for position, action in enumerate(plugin.actions)
             if job.kind in action.kinds and self._shows(action, job)),
            key=lambda entry: entry[:4],
        )
        rows: list[list[discord.ui.Item[Any]]] = []
        declared_row = -1
        for row, _order, _name, _position, namespace, action in entries:
            indexes = range(job.image_count) if action.per_image else range(1)
            for index in indexes:
                if row != declared_row or len(rows[-1]) == ROW_WIDTH:
                    rows.append([])
                    declared_row = row
                button: discord.ui.Button[Any] = discord.ui.Button(
                    style=action.style, label=action.label_for(index), emoji=action.emoji,
                    custom_id=custom_id(namespace, action.key, job.id, index))
                rows[-1].append(self._item_class(namespace)(button))
        if len(rows) > ROWS:
            log.warning("job %s: %d button rows, Discord shows %d; dropping the rest",
                        job.id, len(rows), ROWS)
        view = discord.ui.View(timeout=None)
        for row_number, items in enumerate(rows[:ROWS]):
            for item in items:
                item.row = row_number
                view.add_item(item)
        return view

    def _shows(self, action: ResultAction, job: JobView) -> bool:
        if action.visible is None:
            return True
        if self.bot is None:
            raise RuntimeError("visibility checks need the plugins loaded into a bot (load)")
        try:
            return bool(action.visible(self.bot, job))
        except Exception:
            log.exception("visibility check of button %s failed for job %s; hiding it",
                          action.key, job.id)
            return False

    # -- clicks -----------------------------------------------------------------------------------

    async def run_action(self, interaction: discord.Interaction[Any], namespace: str, key: str,
                         job_id: str, index: int) -> None:
        """Run a click; every failure becomes one clear ephemeral message, never a traceback."""
        plugin = self.plugins.get(namespace)
        if plugin is None:
            await self.answer_unavailable(interaction, namespace)
            return
        try:
            action = plugin.action(key)
            if action is None:
                raise CheckFailure("This button no longer does anything on this bot.")
            await self._run(interaction, plugin, action, job_id, index)
        except CheckFailure as refusal:
            await _tell(interaction, refusal.message)
        except InsufficientCredits as error:
            await _tell(interaction, f"This costs {error.needed} credits and you have "
                                     f"{error.available}. Use /credits to see your balance.")
        except Exception as error:
            await _tell(interaction, report_unexpected(
                log, error, "plugin %s action %s failed on job %s image %s (user %s)",
                plugin.name, key, job_id, index, interaction.user.id,
                summary="Sorry, this button failed."))

    async def _run(self, interaction: discord.Interaction[Any], plugin: Plugin,
                   action: ResultAction, job_id: str, index: int) -> None:
        bot: ImagineBot = interaction.client
        record = await bot.jobs.get(job_id)
        if record is None:
            raise CheckFailure("This image is no longer available (its job was deleted).")
        job = JobView.of(record)
        count = job.image_count if action.per_image else 1
        if not 0 <= index < count:
            raise CheckFailure("This button points at an image that does not exist.")
        price = action.cost(bot, job)
        if price <= 0:
            await _call(bot, interaction, plugin, action, job, index)
            return
        user = interaction.user
        await bot.ledger.touch(user.id, account_created_at=user.created_at)
        hold_id = await bot.ledger.hold(user.id, price,
                                        key=f"{plugin.ns}:{action.key}:{interaction.id}")
        try:
            await _call(bot, interaction, plugin, action, job, index)
        except BaseException:
            await bot.ledger.release(hold_id)
            raise
        await bot.ledger.capture(hold_id)

    async def answer_unavailable(self, interaction: discord.Interaction[Any],
                                 namespace: str) -> None:
        """Buttons of a plugin that is disabled, failed to load, or is gone."""
        await _tell(interaction, self._unavailable.get(
            namespace, "This button no longer does anything on this bot."))


async def _call(bot: ImagineBot, interaction: discord.Interaction[Any], plugin: Plugin,
                action: ResultAction, job: JobView, index: int) -> None:
    await action.callback(bot, interaction, job, index)
    if not interaction.response.is_done():
        # Discord would show "This interaction failed" with no reason; make it a plugin error.
        raise RuntimeError(f"{plugin.name} action {action.key!r} returned without answering "
                           "the interaction")


async def _tell(interaction: discord.Interaction[Any], message: str) -> None:
    try:
        await refuse(interaction, message)
    except discord.HTTPException:
        log.warning("could not tell user %s: %s", interaction.user.id, message, exc_info=True)


async def _install(bot: ImagineBot, plugin: Plugin) -> None:
    cogs: list[str] = []
    added: list[AppCommand] = []
    try:
        for factory in plugin.cogs:
            cog = factory(bot)
            await bot.add_cog(cog)
            cogs.append(cog.qualified_name)
        for command in plugin.commands:
            bot.tree.add_command(command)
            added.append(command)
    except BaseException:
        for name in cogs:
            await bot.remove_cog(name)
        for command in added:
            bot.tree.remove_command(command.name)
        raise


def _button_class(registry: PluginRegistry, namespace: str) -> ButtonClass:
    template = (rf"{re.escape(namespace)}:(?P<key>[a-z0-9_]{{1,16}}):(?P<job>{JOB_ID_RE}):"
                r"(?P<index>\d{1,2})")

    class PluginButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=template):
        async def callback(self, interaction: discord.Interaction[Any]) -> None:
            match = self.template.fullmatch(self.custom_id)
            assert match is not None  # discord.py dispatched us because it matched
            await registry.run_action(interaction, namespace, match["key"], match["job"],
                                      int(match["index"]))

        @classmethod
        async def from_custom_id(cls, interaction: discord.Interaction[Any],
                                 item: discord.ui.Item[Any],
                                 match: re.Match[str]) -> PluginButton:
            return cls(item)  # type: ignore[arg-type]

    PluginButton.__name__ = PluginButton.__qualname__ = f"PluginButton_{namespace}"
    return PluginButton


def _unavailable_class(registry: PluginRegistry) -> ButtonClass:
    taken = "|".join(re.escape(ns) for ns in sorted({*registry.plugins, *RESERVED_NAMESPACES}))
    template = (rf"(?!(?:{taken}):)(?P<ns>[a-z][a-z0-9_]{{0,19}}):[a-z0-9_]{{1,16}}:{JOB_ID_RE}:"
                r"\d{1,2}")

    class UnavailableButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=template):
        async def callback(self, interaction: discord.Interaction[Any]) -> None:
            match = self.template.fullmatch(self.custom_id)
            assert match is not None
            await registry.answer_unavailable(interaction, match["ns"])

        @classmethod
        async def from_custom_id(cls, interaction: discord.Interaction[Any],
                                 item: discord.ui.Item[Any],
                                 match: re.Match[str]) -> UnavailableButton:
            return cls(item)  # type: ignore[arg-type]

    return UnavailableButton
