"""Settings are validated at startup and a wrong value is reported in one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bot.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGINEBOT_")}
    full_env["PYTHONPATH"] = str(REPO)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "bot", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or REPO, timeout=120)


def test_defaults_follow_the_offer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.signup_credits == 200
    assert settings.daily_credits == 100
    assert settings.database_url == "sqlite+aiosqlite:///imaginebot.db"
    assert settings.allowed_models[0] == settings.model


def test_comma_separated_lists(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGINEBOT_ADMIN_USER_IDS", "12, 34")
    monkeypatch.setenv("IMAGINEBOT_MODELS", '["a", "b"]')
    monkeypatch.setenv("IMAGINEBOT_BLOCKLIST", "foo,bar")
    settings = Settings()
    assert settings.admin_user_ids == {12, 34}
    assert settings.models == ["a", "b"]
    assert settings.blocklist == ["foo", "bar"]


def test_toml_file_is_read_and_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imaginebot.toml").write_text('daily_credits = 7\nsignup_credits = 9\n')
    monkeypatch.setenv("IMAGINEBOT_SIGNUP_CREDITS", "11")
    settings = Settings()
    assert settings.daily_credits == 7
    assert settings.signup_credits == 11


def test_token_is_never_echoed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGINEBOT_DISCORD_TOKEN", "sekrit-token-value")
    settings = Settings()
    assert "sekrit-token-value" not in repr(settings)
    assert "sekrit-token-value" not in str(settings.model_dump())
    assert settings.discord_token is not None
    assert settings.discord_token.get_secret_value() == "sekrit-token-value"


@given(st.text(min_size=1, max_size=20).filter(
    lambda s: s.strip() not in {"auto", "cuda", "mps", "cpu"} and "\x00" not in s))
def test_bad_device_names_the_setting(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(device=value)  # type: ignore[arg-type]
    line = Settings.describe_invalid_setting(info.value)
    assert line.startswith("invalid setting IMAGINEBOT_DEVICE:")
    assert "\n" not in line


def test_wrong_setting_stops_the_cli_with_one_line(tmp_path: Path) -> None:
    result = run_cli("db", "upgrade", env={"IMAGINEBOT_DAILY_CREDITS": "lots"}, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "IMAGINEBOT_DAILY_CREDITS" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # six processes that import the bot
def test_help_lists_every_subcommand() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("run", "generate", "db", "credits", "make-test-model"):
        assert command in result.stdout
    for command in ("run", "generate", "db", "credits", "make-test-model"):
        sub = run_cli(command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "usage: imaginebot" in sub.stdout


def test_readme_settings_table_matches_the_code() -> None:
    from bot.settings import settings_table

    readme = (REPO / "README.md").read_text()
    assert settings_table() in readme, "regenerate it with bot.settings.settings_table()"


def test_settings_table_lists_each_plugins_settings_after_the_core_ones() -> None:
    from bot.settings import settings_table

    variables = [line.split("`")[1] for line in settings_table().splitlines()[2:]]
    assert variables[-7:] == [
        "IMAGINEBOT_EXAMPLE_INLINE_LIMIT", "IMAGINEBOT_UPSCALE_MODEL",
        "IMAGINEBOT_UPSCALE_MAX_PIXELS", "IMAGINEBOT_UPSCALE_HIRES_STRENGTH",
        "IMAGINEBOT_VARIATIONS_SUBTLE", "IMAGINEBOT_VARIATIONS_STRONG",
        "IMAGINEBOT_ZOOM_INPAINT_MODEL"]
    # The settings that moved into the plugins are no longer core ones; their old names are
    # named next to the new ones.
    for old in ("IMAGINEBOT_UPSCALER_MODEL", "IMAGINEBOT_HIRES_STRENGTH",
                "IMAGINEBOT_VARIATION_SUBTLE", "IMAGINEBOT_VARIATION_STRONG"):
        assert old not in variables
        assert f"Formerly `{old}` (deprecated" in settings_table()
