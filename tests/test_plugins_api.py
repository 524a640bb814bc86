"""The plugin loader (bot/_plugin_registry.py) and the API it serves (bot/plugin_api.py):
discovery, isolation, API versions, custom_ids, result views and the read-only job view.

Plugin settings are tested in tests/test_plugins_api_settings.py; clicks on plugin buttons
through Discord run end to end in tests/test_plugins_api_e2e.py.
"""

from __future__ import annotations

import dataclasses
import logging
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import discord
import pytest
from discord.ext import commands

import bot.plugin_api
from bot._plugin_registry import (
    ENTRY_POINT_GROUP,
    PluginError,
    PluginRegistry,
    custom_id,
    validate_plugin,
)
from bot.jobs.models import Job
from bot.plugin_api import API_VERSION, JobView, Plugin, PluginSettings, ResultAction
from bot.settings import Settings
from engine.request import GenerationRequest

FIXTURES = "tests.plugins_fixtures"
LOADER = "bot._plugin_registry"
JOB_ID = "0123456789abcdef0123456789abcdef"
CREATED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def job_row(kind: str = "imagine", image_count: int = 4, seeds: list[int] | None = None) -> Job:
    """A job row as the queue keeps it; finished (with images) when ``seeds`` are given."""
    request = GenerationRequest(prompt="a cat", count=image_count, width=32, height=32, steps=2)
    result: dict[str, Any] | None = None if seeds is None else {
        "images": [{"path": f"/out/{JOB_ID}/{i}.png", "seed": seed, "width": 32, "height": 32}
                   for i, seed in enumerate(seeds)],
        "grid": None, "seconds": 1.0, "metadata": {}}
    return Job(id=JOB_ID, kind=kind, owner_id=42, parent_job_id="p" * 32,
               params=request.model_dump(mode="json"), result=result, created_at=CREATED)


def registry(*packages: str, disabled: tuple[str, ...] = ()) -> PluginRegistry:
    return PluginRegistry(Settings(plugins_disabled=list(disabled)), packages=packages,
                          entry_point_group="imaginebot.tests.none")


def make_bot() -> Any:  # a bare discord.py bot stands in for ImagineBot
    return commands.Bot(command_prefix=commands.when_mentioned, intents=discord.Intents.none())


def rows_of(view: discord.ui.View) -> list[list[str]]:
    rows: dict[int, list[str]] = {}
    for item in view.children:
        button = item.item if isinstance(item, discord.ui.DynamicItem) else item
        assert isinstance(button, discord.ui.Button)
        assert item.row is not None
        rows.setdefault(item.row, []).append(button.label or str(button.emoji))
    return [rows[row] for row in sorted(rows)]


async def loaded(plugins: PluginRegistry) -> PluginRegistry:
    """Result views call the actions' visibility checks with the bot the plugins are in."""
    await plugins.load(make_bot())
    return plugins


async def test_example_plugin_loads_from_the_plugins_package():
    plugins = await loaded(PluginRegistry(Settings()))
    example = plugins.plugins["example"]
    assert example.name == "example"
    assert [action.key for action in example.actions] == ["params"]
    assert "example" not in plugins.failed
    view = plugins.result_view(job_row())
    ids = [item.custom_id for item in view.children if isinstance(item, discord.ui.DynamicItem)]
    assert f"example:params:{JOB_ID}:0" in ids


def test_the_job_view_is_a_frozen_snapshot_of_the_row():
    row = job_row(kind="upscale", image_count=2, seeds=[7, 8])
    job = JobView.of(row)
    assert (job.id, job.kind, job.owner_id, job.parent_job_id) == (JOB_ID, "upscale", 42,
                                                                    "p" * 32)
    assert job.request == row.request and job.request.count == 2
    assert job.image_paths == (Path(f"/out/{JOB_ID}/0.png"), Path(f"/out/{JOB_ID}/1.png"))
    assert (job.seeds, job.image_count, job.created_at) == ((7, 8), 2, CREATED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.kind = "imagine"  # type: ignore[misc]
    with pytest.raises(ValueError, match="frozen"):
        job.request.count = 1  # type: ignore[misc]
    row.kind = "imagine"  # a later change to the row does not reach the snapshot
    assert job.kind == "upscale"
    assert not hasattr(job, "hold_id") and not hasattr(job, "interaction_token")


def test_an_unfinished_job_has_no_images_yet():
    job = JobView.of(job_row(image_count=3))
    assert (job.seeds, job.image_paths, job.image_count) == ((), (), 3)


def test_plugin_api_exports_exactly_what_plugins_use():
    assert set(bot.plugin_api.__all__) >= {
        "API_VERSION", "Bot", "CheckFailure", "GenerationRequest", "JobView", "Plugin",
        "PluginSettings", "ResultAction", "admin_only", "plugin_settings", "refuse",
        "start_generation"}
    for name in bot.plugin_api.__all__:
        assert getattr(bot.plugin_api, name) is not None
    from bot.app import ImagineBot

    assert bot.plugin_api.Bot is ImagineBot
    assert "PluginRegistry" not in dir(bot.plugin_api)  # the loader is private


def test_a_plugin_for_another_api_version_is_refused_in_one_line(caplog):
    plugins = registry(f"{FIXTURES}.versions")
    with caplog.at_level(logging.INFO, logger=LOADER):
        plugins.discover()
    assert list(plugins.plugins) == ["current"]
    errors = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(errors) == 1 and errors[0].exc_info is None
    line = errors[0].getMessage()
    assert "\n" not in line
    assert line.startswith("plugin future cannot be used: package "
                           "tests.plugins_fixtures.versions.future: ")
    assert line.endswith(f"it works with plugin API versions {API_VERSION + 1}-"
                         f"{API_VERSION + 2} and this bot has version {API_VERSION}")


def test_disabled_plugin_is_not_even_imported(caplog):
    plugins = registry(f"{FIXTURES}.broken", disabled=("raises_on_import", "working"))
    with caplog.at_level(logging.INFO):
        plugins.discover()
    assert plugins.disabled == {"raises_on_import", "working"}
    assert "raises_on_import" not in plugins.failed
    assert "working" not in plugins.plugins
    assert "plugin working is disabled in settings" in caplog.text


async def test_broken_plugins_are_isolated_and_logged(caplog):
    plugins = registry(f"{FIXTURES}.broken")
    bot = make_bot()
    with caplog.at_level(logging.ERROR, logger=LOADER):
        await plugins.load(bot)
    assert list(plugins.plugins) == ["working"]
    assert set(plugins.failed) == {"raises_on_import", "raises_in_setup", "bad_template",
                                   "cog_fails", "not_a_plugin"}
    assert "cannot even be imported" in plugins.failed["raises_on_import"]
    assert "setup exploded" in plugins.failed["raises_in_setup"]
    assert "bad action key 'a:b'" in plugins.failed["bad_template"]
    assert "cog refused to load" in plugins.failed["cog_fails"]
    assert "neither `plugin` nor `setup()`" in plugins.failed["not_a_plugin"]
    for name in plugins.failed:
        assert f"plugin {name} cannot be used" in caplog.text
    # The failed cog was not left behind, and the working plugin still contributes.
    assert bot.cogs == {}
    assert plugins.operation_modules() == ["tests.plugins_fixtures.broken.working"]
    assert [cls.__name__ for cls in plugins.dynamic_items()] == ["PluginButton_working",
                                                                 "UnavailableButton"]


def test_namespace_clash_is_refused_at_load(caplog):
    plugins = registry(f"{FIXTURES}.clash")
    with caplog.at_level(logging.ERROR):
        plugins.discover()
    assert [plugin.name for plugin in plugins.plugins.values()] == ["first"]
    assert "namespace 'same' is already used by plugin 'first'" in plugins.failed["second"]
    assert "plugin second cannot be used" in caplog.text


async def test_result_view_orders_buttons_by_row_then_order():
    plugins = await loaded(registry(f"{FIXTURES}.rows"))
    view = plugins.result_view(job_row(image_count=4))
    assert rows_of(view) == [["U1", "U2", "U3", "U4", "🔄"], ["V1", "V2", "V3", "V4"],
                             ["First", "🗑️"]]
    ids = [item.custom_id for item in view.children if isinstance(item, discord.ui.DynamicItem)]
    assert ids[:2] == [f"alpha:u:{JOB_ID}:0", f"alpha:u:{JOB_ID}:1"]
    assert all(len(i) <= 100 for i in ids)


async def test_result_view_splits_long_rows_and_stops_at_five(caplog):
    plugins = await loaded(registry(f"{FIXTURES}.rows"))
    assert rows_of(plugins.result_view(job_row(image_count=6))) == [
        ["U1", "U2", "U3", "U4", "U5"], ["U6", "🔄"], ["V1", "V2", "V3", "V4", "V5"], ["V6"],
        ["First", "🗑️"]]
    with caplog.at_level(logging.WARNING):
        view = plugins.result_view(job_row(image_count=11))
    assert rows_of(view) == [[f"U{n}" for n in range(1, 6)], [f"U{n}" for n in range(6, 11)],
                             ["U11", "🔄"], [f"V{n}" for n in range(1, 6)],
                             [f"V{n}" for n in range(6, 11)]]
    assert f"job {JOB_ID}: 7 button rows, Discord shows 5" in caplog.text


async def test_result_view_shows_only_actions_for_the_job_kind():
    plugins = await loaded(registry(f"{FIXTURES}.rows"))
    assert rows_of(plugins.result_view(job_row(kind="upscale", image_count=1))) == [
        ["Upscaled only"]]


async def test_result_view_hides_actions_whose_visibility_check_says_no(caplog):
    plugins = registry(f"{FIXTURES}.visible")
    bot = make_bot()
    await plugins.load(bot)
    with caplog.at_level(logging.ERROR):
        assert rows_of(plugins.result_view(job_row(image_count=4))) == [["Always", "Grids only"]]
        assert rows_of(plugins.result_view(job_row(image_count=1))) == [["Always"]]
    assert "visibility check of button broken failed" in caplog.text
    # The checks got the bot and the read-only view, never the row.
    from tests.plugins_fixtures.visible.gamma import SEEN

    assert SEEN and all(seen_bot is bot and isinstance(job, JobView) for seen_bot, job in SEEN)


def test_dynamic_items_parse_exactly_their_own_custom_ids():
    plugins = registry(f"{FIXTURES}.rows")
    alpha, beta, unavailable = plugins.dynamic_items()
    job = JOB_ID

    def matches(item: type[discord.ui.DynamicItem], value: str) -> bool:
        return item.__discord_ui_compiled_template__.fullmatch(value) is not None

    assert matches(alpha, custom_id("alpha", "u", job, 3))
    assert not matches(alpha, custom_id("beta", "redo", job, 0))
    assert matches(beta, custom_id("beta", "redo", job, 0))
    # Buttons of plugins that are gone get an answer too, but never core's or a loaded plugin's.
    assert matches(unavailable, custom_id("upscale", "u", job, 0))
    assert not matches(unavailable, custom_id("alpha", "u", job, 0))
    assert not matches(unavailable, f"core:cancel:{job}")
    assert not matches(unavailable, custom_id("core", "x", job, 0))


def write_distribution(path, module: str, source: str, entry_points: str) -> None:
    (path / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = path / "fake_imaginebot_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-imaginebot-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_points}\n")


PLUGIN_SOURCE = """
    from bot.plugin_api import Plugin, ResultAction


    async def _stamp(bot, interaction, job, index):
        await interaction.response.send_message("stamped", ephemeral=True)


    def setup():
        return Plugin(name="stamp", actions=[ResultAction(key="s", emoji="🖃", callback=_stamp)])


    plugin = Plugin(name="watermark", actions=[ResultAction(key="w", label="W", callback=_stamp)])
"""


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    write_distribution(tmp_path, "fake_entry_plugin", PLUGIN_SOURCE,
                       "stamp = fake_entry_plugin:setup\n"
                       "watermark = fake_entry_plugin:plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = PluginRegistry(Settings(), packages=())
    plugins.discover()
    assert set(plugins.plugins) == {"stamp", "watermark"}
    assert plugins.failed == {}


def test_disabled_entry_point_is_skipped(tmp_path, monkeypatch):
    write_distribution(tmp_path, "fake_entry_plugin_off", "raise ImportError('never imported')",
                       "stamp = fake_entry_plugin_off:setup")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = PluginRegistry(Settings(plugins_disabled=["stamp"]), packages=())
    plugins.discover()
    assert plugins.disabled == {"stamp"} and plugins.failed == {} and plugins.plugins == {}


async def _noop(bot, interaction, job, index) -> None:
    return None


class Elsewhere(PluginSettings):
    namespace = "elsewhere"


@pytest.mark.parametrize(("plugin", "reason"), [
    (Plugin(name="Bad Name"), "bad plugin name"),
    (Plugin(name="core"), "bad namespace 'core'"),
    (Plugin(name="x", namespace="way_too_long_namespace_x"), "bad namespace"),
    (Plugin(name="x", actions=[ResultAction(key="a", callback=_noop)]), "needs a label"),
    (Plugin(name="x", actions=[ResultAction(key="a", label="A", callback=_noop)] * 2), "repeat"),
    (Plugin(name="x", actions=[ResultAction(key="a", label="A", row=5, callback=_noop)]), "row"),
    (Plugin(name="x", actions=[ResultAction(key="a", label="L" * 81, callback=_noop)]), "label"),
    (Plugin(name="x", actions=[ResultAction(key="a", label="A", price=-1, callback=_noop)]),
     "negative price"),
    (Plugin(name="x", actions=[ResultAction(key="a", label="A", callback=_noop,
                                            style=discord.ButtonStyle.link)]), "link"),
    (Plugin(name="x", operation_modules=["no_such_module.ops"]), "cannot be found"),
    (Plugin(name="x", api_versions=range(API_VERSION + 1, API_VERSION + 2)),
     f"versions {API_VERSION + 1} and this bot has version {API_VERSION}"),
    (Plugin(name="x", settings=Settings),  # type: ignore[arg-type]
     "must be a PluginSettings subclass"),
    (Plugin(name="x", settings=Elsewhere), "namespace 'elsewhere'; they must have the plugin's"),
])
def test_invalid_plugins_are_refused_with_a_reason(plugin, reason):
    with pytest.raises(PluginError, match=reason):
        validate_plugin(plugin)
