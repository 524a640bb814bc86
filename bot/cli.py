"""The ``imaginebot`` command line: one parser, and each subcommand imports only what it needs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from bot import logs
from bot.settings import Settings


def load_settings() -> Settings:
    """Validate settings at startup; a bad value ends the program with one line."""
    try:
        return Settings()
    except ValidationError as error:
        print(f"imaginebot: {Settings.describe_invalid_setting(error)}", file=sys.stderr)
        raise SystemExit(2) from None


def build_parser() -> argparse.ArgumentParser:
    from bot.ledger.cli import add_credits_arguments
    from engine.cli import add_generate_arguments, add_make_test_model_arguments
    from engine.remote.cli import add_worker_arguments

    parser = argparse.ArgumentParser(
        prog="imaginebot",
        description="Self-hosted Discord bot for diffusion image generation.",
    )
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="start the Discord bot",
                              description="Start the Discord bot.")
    run.add_argument("--sync", action="store_true",
                     help="sync slash commands with Discord even if they look unchanged")

    add_generate_arguments(commands.add_parser(
        "generate", help="generate images with the engine only (no Discord)",
        description="Generate images with the engine only and write them to a folder."))
    add_make_test_model_arguments(commands.add_parser(
        "make-test-model", help="write a tiny random-weight model for tests",
        description="Write a tiny random-weight model in diffusers format, built offline."))

    add_worker_arguments(commands.add_parser(
        "worker", help="run an engine worker that takes jobs from the bot's Redis",
        description="Run one engine worker (one per GPU) for a bot with IMAGINEBOT_ENGINE="
        "redis://...; it needs neither the Discord token nor the database."))

    db = commands.add_parser("db", help="database maintenance",
                             description="Database maintenance.")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_commands.add_parser("upgrade", help="apply migrations up to the newest",
                           description="Apply Alembic migrations up to head.")

    add_credits_arguments(commands.add_parser(
        "credits", help="admin credit operations from a shell",
        description="Admin credit operations from a shell (the actor is recorded as 0)."))
    from sandbox.playground import add_playground_arguments

    add_playground_arguments(commands.add_parser(
        "playground", help="try the bot in a web page, with a local Discord emulator",
        description="Start the Discord emulator, the bot against it and a web page that "
                    "looks like a Discord channel. No Discord account or token needed."))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    settings = load_settings()
    if args.command == "run":
        from bot.app import run_bot

        return run_bot(settings, sync=args.sync)
    if args.command == "generate":
        from engine.cli import generate_command

        return generate_command(args, settings)
    if args.command == "make-test-model":
        from engine.cli import make_test_model_command

        return make_test_model_command(args)
    if args.command == "worker":
        from bot._plugin_registry import PluginRegistry
        from engine.remote.cli import worker_command

        return worker_command(args, settings, PluginRegistry(settings).operation_modules())
    if args.command == "db":
        from bot.database import upgrade_command

        return upgrade_command(settings.database_url)
    if args.command == "playground":
        from sandbox.playground import playground_command

        return playground_command(args)
    from bot.ledger.cli import credits_command

    return credits_command(args, settings)


if __name__ == "__main__":
    raise SystemExit(main())
