"""``imaginebot credits``: the shell's admin actions, recorded as actor 0."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.ledger import MAX_AMOUNT, Ledger
from bot.ledger.cli import add_credits_arguments, credits_command
from bot.ledger.config import LedgerSettings

USER = "175928847299117063"


def credits(settings: LedgerSettings, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="imaginebot credits")
    add_credits_arguments(parser)
    return credits_command(parser.parse_args(argv), settings)


@pytest.fixture
def settings(tmp_path: Path) -> LedgerSettings:
    return LedgerSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")


def test_grant_revoke_balance_history_audit(settings: LedgerSettings,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert credits(settings, "grant", USER, "50", "welcome back") == 0
    assert capsys.readouterr().out == f"granted 50 to user {USER}; balance 50\n"
    assert credits(settings, "grant", USER, "50", "again") == 0  # a new key each time
    assert credits(settings, "revoke", USER, "80", "oops") == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        f"revoked 80 of 80 from user {USER}; balance 20"
    assert credits(settings, "revoke", USER, "80", "more") == 0
    assert capsys.readouterr().out == f"revoked 20 of 80 from user {USER}; balance 0\n"
    assert credits(settings, "balance", USER) == 0
    assert capsys.readouterr().out == f"user {USER}: 0 available, 0 held\n"
    assert credits(settings, "history", USER, "--limit", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert "revoke" in lines[0] and "-20" in lines[0] and "more (by 0)" in lines[0]
    assert credits(settings, "audit") == 0
    assert capsys.readouterr().out == "ledger is healthy\n"


async def break_balance(database_url: str) -> None:
    ledger = await Ledger.connect(database_url)
    await ledger.grant(int(USER), 5, 1, "x", "x")
    async with ledger.database.begin() as conn:
        await conn.exec_driver_sql("UPDATE ledger_users SET posted = 9, available = 9")
    await ledger.close()


def test_audit_exits_1_on_a_broken_ledger(settings: LedgerSettings,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(break_balance(settings.database_url))
    assert credits(settings, "audit") == 1
    assert "1 problem(s) found" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["grant", USER, "-3", "x"], ["grant", "bob", "3", "x"],
                                  ["history", USER, "--limit", "0"], ["refund"]])
def test_bad_input_is_a_usage_error(settings: LedgerSettings, argv: list[str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        credits(settings, *argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["grant", "revoke"])
@pytest.mark.parametrize("amount", [MAX_AMOUNT + 1, 2**63])
def test_an_amount_over_the_limit_is_one_line_and_exit_2(
        settings: LedgerSettings, action: str, amount: int,
        capsys: pytest.CaptureFixture[str]) -> None:
    """2^63 no longer reaches SQLite (OverflowError) or lands there (2^63-1, then overflows)."""
    assert credits(settings, "grant", USER, "5", "before") == 0
    capsys.readouterr()
    assert credits(settings, action, USER, str(amount), "too much") == 2
    assert capsys.readouterr() == ("", "imaginebot credits: one transfer moves at most "
                                       f"{MAX_AMOUNT} credits, not {amount}\n")
    assert credits(settings, "balance", USER) == 0
    assert capsys.readouterr().out == f"user {USER}: 5 available, 0 held\n"


def test_unusable_database_is_one_line(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a database, " * 100)
    settings = LedgerSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'notes.txt'}")
    assert credits(settings, "balance", USER) == 1
    assert capsys.readouterr().err == \
        "imaginebot credits: database error: file is not a database\n"


def test_database_folder_is_created(tmp_path: Path) -> None:
    settings = LedgerSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'data' / 'bot.db'}")
    assert credits(settings, "audit") == 0
    assert (tmp_path / "data" / "bot.db").is_file()


def test_ledger_settings_are_read_like_the_bots(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imaginebot.toml").write_text("daily_credits = 7\nsignup_credits = 9\n")
    monkeypatch.setenv("IMAGINEBOT_SIGNUP_CREDITS", "11")
    monkeypatch.setenv("IMAGINEBOT_DEVICE", "not-a-device")  # the engine's, not the ledger's
    settings = LedgerSettings()
    assert (settings.daily_credits, settings.signup_credits) == (7, 11)
    assert settings.hold_ttl_minutes == 360
    monkeypatch.setenv("IMAGINEBOT_HOLD_TTL_MINUTES", "0")
    with pytest.raises(ValidationError, match="hold_ttl_minutes"):
        LedgerSettings()
