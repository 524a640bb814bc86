"""Per-plugin settings: IMAGINEBOT_<NAMESPACE>_* and imaginebot.toml, the names of the previous
release, and a plugin refused (alone) for a bad value."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot._plugin_registry import PluginRegistry
from bot.plugin_api import plugin_settings
from bot.settings import Settings
from engine.operations import OperationContext, PluginSettings
from plugins.upscale.settings import UpscaleSettings
from plugins.variations.settings import VariationSettings

FIXTURES = "tests.plugins_fixtures"
LOADER = "bot._plugin_registry"


@pytest.fixture(autouse=True)
def no_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A working directory of the test's own: imaginebot.toml is read from there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path / "imaginebot.toml"


def builtin_plugins() -> PluginRegistry:
    plugins = PluginRegistry(Settings(), entry_point_group=None)
    plugins.discover()
    return plugins


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelno == logging.WARNING]


def test_defaults_without_any_setting():
    plugins = builtin_plugins()
    upscale = plugins.settings_for(UpscaleSettings)
    assert (upscale.model, upscale.max_pixels, upscale.hires_strength) == (None, 6291456, 0.35)
    variations = plugins.settings_for(VariationSettings)
    assert (variations.subtle, variations.strong) == (0.25, 0.6)


def test_settings_are_read_from_the_plugins_namespace(monkeypatch, no_toml, caplog):
    monkeypatch.setenv("IMAGINEBOT_UPSCALE_MODEL", "/models/esrgan.pth")
    monkeypatch.setenv("IMAGINEBOT_UPSCALE_MAX_PIXELS", "20000")
    monkeypatch.setenv("IMAGINEBOT_VARIATIONS_SUBTLE", "0.1")
    no_toml.write_text("variations_strong = 0.9\nupscale_max_pixels = 10000\n")
    with caplog.at_level(logging.WARNING):
        plugins = builtin_plugins()
    bot = SimpleNamespace(plugins=plugins)  # what plugin_settings needs of the bot
    upscale = plugin_settings(bot, UpscaleSettings)  # type: ignore[arg-type]
    assert upscale.model == Path("/models/esrgan.pth")
    assert upscale.max_pixels == 20000  # the environment wins over imaginebot.toml
    variations = plugin_settings(bot, VariationSettings)  # type: ignore[arg-type]
    assert (variations.subtle, variations.strong) == (0.1, 0.9)
    assert warnings(caplog) == []
    # The core settings do not take the plugins' variables for their own.
    assert "upscale_max_pixels" not in Settings.model_fields


def test_old_names_still_work_with_a_deprecation_warning(monkeypatch, no_toml, caplog):
    monkeypatch.setenv("IMAGINEBOT_UPSCALER_MODEL", "/models/old.pth")
    monkeypatch.setenv("IMAGINEBOT_VARIATION_SUBTLE", "0.15")
    no_toml.write_text("variation_strong = 0.8\nhires_strength = 0.5\n")
    with caplog.at_level(logging.WARNING):
        plugins = builtin_plugins()
    upscale = plugins.settings_for(UpscaleSettings)
    assert (upscale.model, upscale.hires_strength) == (Path("/models/old.pth"), 0.5)
    variations = plugins.settings_for(VariationSettings)
    assert (variations.subtle, variations.strong) == (0.15, 0.8)
    assert sorted(warnings(caplog)) == sorted([
        "IMAGINEBOT_UPSCALER_MODEL is deprecated and stops working in the next release; use "
        "IMAGINEBOT_UPSCALE_MODEL instead",
        "IMAGINEBOT_VARIATION_SUBTLE is deprecated and stops working in the next release; use "
        "IMAGINEBOT_VARIATIONS_SUBTLE instead",
        "variation_strong in imaginebot.toml is deprecated and stops working in the next "
        "release; use variations_strong in imaginebot.toml instead",
        "hires_strength in imaginebot.toml is deprecated and stops working in the next "
        "release; use upscale_hires_strength in imaginebot.toml instead",
    ])


def test_a_new_name_wins_over_its_old_one(monkeypatch, no_toml):
    monkeypatch.setenv("IMAGINEBOT_VARIATION_SUBTLE", "0.15")
    monkeypatch.setenv("IMAGINEBOT_VARIATIONS_SUBTLE", "0.3")
    no_toml.write_text("variations_strong = 0.7\nvariation_strong = 0.8\n")
    settings = VariationSettings()
    assert (settings.subtle, settings.strong) == (0.3, 0.7)
    # An old variable still wins over the file, as it did when it was a core setting.
    monkeypatch.setenv("IMAGINEBOT_VARIATION_STRONG", "0.5")
    assert VariationSettings().strong == 0.5


@pytest.mark.parametrize(("variable", "value", "line"), [
    ("IMAGINEBOT_UPSCALE_MAX_PIXELS", "lots", "invalid setting IMAGINEBOT_UPSCALE_MAX_PIXELS: "
     "Input should be a valid integer, unable to parse string as an integer"),
    ("IMAGINEBOT_HIRES_STRENGTH", "5", "invalid setting IMAGINEBOT_UPSCALE_HIRES_STRENGTH (or "
     "its old name IMAGINEBOT_HIRES_STRENGTH): Input should be less than or equal to 1"),
])
def test_an_invalid_setting_refuses_that_plugin_alone_in_one_line(monkeypatch, caplog, variable,
                                                                   value, line):
    monkeypatch.setenv(variable, value)
    with caplog.at_level(logging.ERROR, logger=LOADER):
        plugins = builtin_plugins()
    assert set(plugins.plugins) == {"example", "variations", "zoom"}
    assert plugins.failed == {"upscale": f"package plugins.upscale: {line}"}
    (record,) = caplog.records
    assert record.getMessage() == f"plugin upscale cannot be used: package plugins.upscale: {line}"
    assert record.exc_info is None
    # Its buttons on older messages say it failed to start, and nothing asks for its settings.
    with pytest.raises(LookupError, match="UpscaleSettings"):
        plugins.settings_for(UpscaleSettings)


def test_plugin_settings_may_not_shadow_core_settings(caplog):
    plugins = PluginRegistry(Settings(), packages=[f"{FIXTURES}.settings_clash"],
                             entry_point_group=None)
    with caplog.at_level(logging.ERROR, logger=LOADER):
        plugins.discover()
    assert plugins.plugins == {}
    assert "setting IMAGINEBOT_MAX_PIXELS is already a core setting" in plugins.failed["max"]


class Tuned(PluginSettings):
    namespace = "tuned"

    level: int = 1


def test_operations_read_their_settings_once_per_worker(monkeypatch):
    """Inside the worker: read on first use, then kept, so a job does not re-read the file."""

    class Runner:  # stands in for engine.runner.Runner: one per worker
        pass

    def context(runner: Runner) -> OperationContext:
        return OperationContext(runner, lambda *args: None, lambda: False)  # type: ignore[arg-type]

    worker = Runner()
    monkeypatch.setenv("IMAGINEBOT_TUNED_LEVEL", "2")
    assert context(worker).plugin_settings(Tuned).level == 2
    monkeypatch.setenv("IMAGINEBOT_TUNED_LEVEL", "3")
    assert context(worker).plugin_settings(Tuned).level == 2
    assert context(Runner()).plugin_settings(Tuned).level == 3
