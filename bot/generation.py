"""The one generation flow: /imagine and every plugin button that makes images go through here.

:func:`start_generation` answers the interaction, checks and charges, and queues the job;
:class:`DiscordPresenter` then shows the job's life on its message. The presenter works from the
job row alone (never from the live interaction), so a job queued before a restart, or one that
outlives its 15-minute interaction token, is shown the same way: through the interaction webhook
while the token is valid, through the bot's own channel message after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import io
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot import checks
from bot.incidents import hide_paths, report_unexpected
from bot.jobs.api import DeliveryError, Ending, NewJob, QueueRefusal, Refusal
from bot.jobs.models import EndReason, Job, JobState
from bot.ledger import InsufficientCredits, OverLimit
from bot.pricing import request_cost
from bot.uploads import TooLarge, fit_upload
from engine.events import Progress
from engine.request import GenerationRequest, RequestError

if TYPE_CHECKING:
    from bot.app import ImagineBot

log = logging.getLogger(__name__)

#: Least time between two progress edits of one message.
PROGRESS_INTERVAL = 2.0
#: Interaction tokens live 15 minutes; stop using one this long before it expires.
TOKEN_LIFETIME = timedelta(minutes=15)
TOKEN_MARGIN = timedelta(seconds=30)
CANCEL_PREFIX = "core:cancel:"
EMBED_COLOUR = discord.Colour.blurple()
#: Discord's longest message nonce.
NONCE_LENGTH = 25
#: Discord's limits on an embed; a message over any of them is refused with a 400.
EMBED_TOTAL_MAX = 6000
DESCRIPTION_MAX = 4096
FIELD_VALUE_MAX = 1024
FOOTER_MAX = 2048
#: Model names are short; a long one (an admin's sidecar name) is cut here.
MODEL_NAME_MAX = 200
ELLIPSIS = "…"
FOOTER_SEPARATOR = " · "
#: Discord's markdown characters (and the "<" of <@mentions>, <#channels>, <t:timestamps>); a
#: member's text shows each one behind a backslash, which Discord hides, so it reads as typed.
MARKDOWN = re.compile(r"[\\*_~`|<\[\]()]")
#: Markdown only at the start of a line: headings, subtext, lists and quotes.
LINE_MARKDOWN = re.compile(r"^(\s*)([#>-])", re.MULTILINE)
#: What the bot needs in a channel to post a result there itself, as it does once the
#: interaction's 15-minute token has expired: (permission, its name in Discord's settings).
POST_PERMISSIONS = (("send_messages", "Send Messages"), ("embed_links", "Embed Links"),
                    ("attach_files", "Attach Files"))
NOT_CHARGED = " You were not charged; please try again."

Fields = dict[str, Any]


async def start_generation(bot: ImagineBot, interaction: discord.Interaction[Any],
                           request: GenerationRequest, *, action: str, kind: str = "imagine",
                           parent_job_id: str | None = None) -> Job | None:
    """Defer, check, then hold ``{action}:{interaction.id}`` and queue the job (one database
    transaction, so a crash cannot keep one without the other), and show the queued job.

    Returns the job, or None when the request was refused (the user has been told why and
    nothing is held). ``kind`` names what the result is, which picks its buttons.
    """
    if not interaction.response.is_done():
        await interaction.response.defer(thinking=True)
    user = interaction.user
    try:
        ensure_can_post(interaction)
        checked = await checks.ensure_can_generate(bot, interaction, request)
        resolved = await validate(bot, checked)
        bot.jobs.admit(user.id, resolved)
        await bot.ledger.touch(user.id, account_created_at=user.created_at)
        job, position = await bot.jobs.enqueue(NewJob(
            request=resolved, kind=kind, action=action, owner_id=user.id,
            cost=price(bot, resolved), application_id=interaction.application_id,
            interaction_id=interaction.id, interaction_token=interaction.token,
            guild_id=interaction.guild_id, channel_id=interaction.channel_id or 0,
            upload_limit=upload_limit(interaction), parent_job_id=parent_job_id))
    except (checks.CheckFailure, RequestError, QueueRefusal, InsufficientCredits,
            OverLimit) as error:
        await refuse_deferred(interaction, refusal_text(bot, error))
        return None
    message_id: int | None = None
    try:
        message = await interaction.edit_original_response(
            content=queued_text(bot, position, job.cost), view=cancel_view(job.id))
        message_id = message.id
    except discord.HTTPException:
        log.warning("job %s: could not show the queued message", job.id, exc_info=True)
    await bot.jobs.attach_message(job.id, message_id)
    return job


async def validate(bot: ImagineBot, request: GenerationRequest) -> GenerationRequest:
    """Engine validation, keeping the model as the user named it so it re-validates later.

    In a thread: a local engine reads the model's small config files."""
    resolved = await asyncio.to_thread(bot.engine.validate, request)
    return resolved.model_copy(update={"model": request.model or bot.settings.model})


def price(bot: ImagineBot, request: GenerationRequest) -> int:
    """What the request costs, before it is queued: a plugin operation by what it makes (the
    plugin's ``prices``), txt2img and unpriced operations by the request's size and steps."""
    if request.operation != "txt2img":
        priced = bot.plugins.price_for(bot, request)
        if priced is not None:
            return priced
    return request_cost(bot.settings, request)


def upload_limit(interaction: discord.Interaction[Any]) -> int:
    guild = interaction.guild
    limit = interaction.filesize_limit
    return min(limit, guild.filesize_limit) if guild is not None and limit else limit


def ensure_can_post(interaction: discord.Interaction[Any]) -> None:
    """Refuse, before anything is held, a job whose result the bot could not post here.

    The interaction's token needs no permission, but it expires after 15 minutes; a result
    after that is the bot's own channel message, which needs these permissions. Checking them
    now says so at once instead of failing the job later.
    """
    permissions = interaction.app_permissions
    needed = list(POST_PERMISSIONS)
    if isinstance(interaction.channel, discord.Thread):
        needed[0] = ("send_messages_in_threads", "Send Messages in Threads")
    missing = [name for flag, name in needed if not getattr(permissions, flag)]
    if missing:
        names = " and ".join(f"**{name}**" for name in missing)
        plural = "s" if len(missing) > 1 else ""
        raise checks.CheckFailure(
            f"I can't post images in this channel: I'm missing the {names} permission{plural} "
            f"here. A server administrator can grant {'them' if plural else 'it'}, or use "
            "another channel. You were not charged.")


def refusal_text(bot: ImagineBot, error: Exception) -> str:
    if isinstance(error, InsufficientCredits):
        when = discord.utils.format_dt(bot.ledger.next_daily_at(), "R")
        return (f"This costs {error.needed} credits and you have {error.available}. "
                f"Your next daily credits arrive {when}; /credits shows your balance.")
    if isinstance(error, RequestError):
        text = hide_paths(str(error))
        return text[:1].upper() + text[1:] + "."
    if isinstance(error, checks.CheckFailure):
        return error.message
    if isinstance(error, QueueRefusal):
        return queue_refusal_text(error)
    if isinstance(error, OverLimit):  # prices set so high that one job would break the ledger
        return ("This would cost more credits than one job may take; try a smaller size, "
                "fewer steps or fewer images.")
    return str(error)


def queue_refusal_text(refusal: QueueRefusal) -> str:
    match refusal.reason:
        case Refusal.CLOSING:
            return ("The bot is restarting and takes no new jobs right now; please try again in "
                    "a minute.")
        case Refusal.USER_LIMIT:
            return (f"You already have {refusal.count} jobs waiting; please wait for one to "
                    "start before adding another.")
        case Refusal.GLOBAL_LIMIT:
            return "The queue is full right now; please try again in a few minutes."
        case Refusal.QUARANTINED:
            return (f"This exact request made the image generator crash {refusal.count} times, "
                    "so it is no longer accepted. You were not charged. Please change something "
                    "(the prompt, size or steps: a new seed alone counts as the same request) and "
                    "try again.")


def ending_text(ending: Ending, job_id: str) -> str:
    """What a job's message says when it ends without a result.

    The engine's refusals are sentences meant for users, shown without the paths they may
    quote; an error is logged with its details and shown as a fixed sentence and a reference.
    """
    detail = hide_paths(str(ending.detail))
    match ending.reason:
        case EndReason.CANCELLED:
            return "Cancelled. You were not charged."
        case EndReason.CANCELLED_BY_ADMIN:
            return (f"Cancelled by <@{ending.actor_id}> (an administrator). You were not "
                    "charged.")
        case EndReason.RESTART_LIMIT:
            return ("This job could not be finished after the bot restarted, so it was stopped. "
                    "You were not charged.")
        case EndReason.HOLD_EXPIRED:
            return ("This job waited so long that its credit hold expired, so it was not run. "
                    "You were not charged.")
        case EndReason.QUARANTINED:
            return ("This exact request made the image generator crash too often, so it was "
                    "not run. You were not charged.")
        case EndReason.NO_LONGER_VALID:
            return f"This job can no longer run: {detail}. You were not charged."
        case EndReason.INVALID:
            return f"{detail}. You were not charged."
        case EndReason.CRASHED:
            return ("The image generator crashed while making your images. You were not "
                    "charged; please try again.")
        case EndReason.STALLED:
            return ("The image generator stopped responding, so your job was stopped. You were "
                    "not charged; please try again.")
        case EndReason.LOST:
            return ("The image generators running this job went away each time it started, so "
                    "it was stopped. You were not charged; please try again.")
        case EndReason.FAILED:
            return report_unexpected(log, ending.detail, "job %s failed in the engine", job_id,
                                     summary="Making your images failed.") + NOT_CHARGED
        case EndReason.ERROR:
            return report_unexpected(log, ending.detail, "job %s ended by an error", job_id,
                                     summary="Something went wrong while making your "
                                             "images.") + NOT_CHARGED
        case EndReason.UNDELIVERABLE:
            return f"{detail} You were not charged."
        case EndReason.DELIVERY_FAILED:
            return report_unexpected(log, ending.detail, "job %s could not be posted", job_id,
                                     summary="Your images were made but could not be "
                                             "posted.") + NOT_CHARGED


async def refuse_deferred(interaction: discord.Interaction[Any], text: str) -> None:
    """Replace the public "thinking…" message by a message only the user sees."""
    try:
        await interaction.delete_original_response()
        await interaction.followup.send(text, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not tell user %s: %s", interaction.user.id, text, exc_info=True)


def queued_text(bot: ImagineBot, position: int, cost: int) -> str:
    """A queued job's line; while no engine worker is online (remote workers all stopped,
    say), it says so: the job holds its credits and waits for one."""
    place = "next in line" if position <= 1 else f"position {position}"
    text = f"⏳ Queued, {place} · costs {credits(cost)}"
    if bot.engine.catalogue().workers_online == 0:
        text += "\nNo image generator is online yet; your job runs as soon as one is."
    return text


def credits(amount: int) -> str:
    return f"{amount} credit{'' if amount == 1 else 's'}"


def cost_text(cost: int, balance: int) -> str:
    """The line only the owner sees after delivery: the public result shows no balance."""
    spent = f"This result cost {credits(cost)}" if cost else "This result was free"
    return f"{spent}; you have {credits(balance)} left. /credits shows the details."


# -- the cancel button ----------------------------------------------------------------------------

class CancelButton(discord.ui.DynamicItem[discord.ui.Button[Any]],
                   template=CANCEL_PREFIX + r"(?P<job_id>[0-9a-f]{32})"):
    """❌ on a queued or running job; only its owner or an admin may use it."""

    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(style=discord.ButtonStyle.secondary, emoji="❌",
                                           label="Cancel", custom_id=CANCEL_PREFIX + job_id))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any],
                             item: discord.ui.Item[Any], match: Any) -> CancelButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot: ImagineBot = interaction.client
        job = await bot.jobs.get(self.job_id)
        if job is None:
            await checks.refuse(interaction, "This job no longer exists.")
            return
        admin = await checks.is_admin(bot, interaction.user, bot.settings)
        if job.owner_id != interaction.user.id and not admin:
            await checks.refuse(interaction, "Only the person who started this job (or an "
                                             "administrator) can cancel it.")
            return
        if job.finished or not await bot.jobs.cancel(job.id, interaction.user.id, admin=admin):
            await checks.refuse(interaction, "This job has already finished.")
            return
        # The queue edits the message itself once the engine has stopped.
        await interaction.response.defer()


def cancel_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


# -- showing a job --------------------------------------------------------------------------------

class Shows(enum.StrEnum):
    """What an update of a job's message shows. A new channel message for it carries a nonce
    made of this and the job id, so that posting the same thing again (a retry, or a delivery
    repeated after a crash) returns the message already posted instead of a second one."""

    STATUS = "s"
    RESULT = "r"
    ENDING = "e"


def message_nonce(job_id: str, shows: Shows) -> str:
    """The same on every try: ``shows`` and the first 24 hex digits (96 random bits) of the
    job id, Discord allowing 25 characters. discord.py sends any nonce with enforce_nonce."""
    return f"{shows}{job_id}"[:NONCE_LENGTH]


@dataclass
class _Progress:
    """Throttled progress edits of one job: the latest event waits for the next free slot."""

    latest: Progress | None = None
    last_edit: float = 0.0
    task: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class DiscordPresenter:
    """Shows jobs on Discord: queued/running/progress/result/failure on the job's message."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self._progress: dict[str, _Progress] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def resumed(self, job: Job, position: int) -> None:
        await self._edit(job, lambda: {
            "content": queued_text(self.bot, position, job.cost) + " (resumed after a restart)",
            "view": cancel_view(job.id)})

    async def requeued(self, job: Job, position: int) -> None:
        await self._edit(job, lambda: {
            "content": queued_text(self.bot, position, job.cost)
            + " (the image generator running it went away; it runs again)",
            "view": cancel_view(job.id), "attachments": []})

    async def paused(self, job: Job) -> None:
        await self._edit(job, lambda: {
            "content": "⏸ The bot is restarting; your job stays queued and continues when it "
                       "is back.", "view": cancel_view(job.id), "attachments": []})

    async def moved(self, job: Job, position: int) -> None:
        # Checked again under the message lock: "Starting…" must never be overwritten.
        await self._edit(job, lambda: {"content": queued_text(self.bot, position, job.cost),
                                       "view": cancel_view(job.id)},
                         unless=lambda: self.bot.jobs.position(job.id) != position)

    async def started(self, job: Job) -> None:
        await self._edit(job, lambda: {"content": "🎨 Starting…", "view": cancel_view(job.id)})

    async def progress(self, job: Job, event: Progress) -> None:
        state = self._progress.setdefault(job.id, _Progress())
        state.latest = event
        if state.task is None or state.task.done():
            state.task = asyncio.create_task(self._show_progress(job, state))

    async def _show_progress(self, job: Job, state: _Progress) -> None:
        while state.latest is not None and not state.stop.is_set():
            wait = state.last_edit + PROGRESS_INTERVAL - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.stop.wait(), wait)
                continue
            event, state.latest = state.latest, None
            state.last_edit = time.monotonic()
            try:
                await self._edit(job, functools.partial(progress_fields, job, event),
                                 unless=state.stop.is_set)
            except Exception:
                # A missed progress edit costs nothing; the next one or the result follows.
                log.warning("job %s: could not show step %d", job.id, event.step,
                            exc_info=True)

    async def _finish_progress(self, job_id: str) -> None:
        """No progress edit may land after the final one."""
        state = self._progress.pop(job_id, None)
        if state is not None and state.task is not None:
            state.stop.set()
            with contextlib.suppress(Exception):
                await state.task

    async def deliver(self, job: Job) -> int:
        await self._finish_progress(job.id)
        assert job.result is not None
        grid = job.result.get("grid") or job.result["images"][0]["path"]
        try:
            upload = await asyncio.to_thread(fit_upload, Path(grid), job.upload_limit)
        except FileNotFoundError:
            raise DeliveryError("The image files are gone from the server.") from None
        except TooLarge:
            raise DeliveryError("The images are too large for this channel's upload limit, "
                                "even re-encoded and shrunk.") from None
        view = self.bot.plugins.result_view(job)

        def result(embed: discord.Embed) -> Callable[[], Fields]:
            return lambda: {"content": "", "embed": embed, "view": view, "attachments": [
                discord.File(io.BytesIO(upload.data), upload.filename)]}

        try:
            try:
                message_id = await self._edit(
                    job, result(result_embed(job, upload.filename, upload.note)),
                    shows=Shows.RESULT)
            except discord.HTTPException as error:
                if error.status != 400:
                    raise
                log.warning("job %s: Discord refused the result (%s); posting it with a "
                            "minimal embed", job.id, error.text)
                message_id = await self._edit(
                    job, result(minimal_embed(job, upload.filename)), shows=Shows.RESULT)
        except discord.HTTPException as error:
            if error.status == 413:
                raise DeliveryError("The images are too large for this channel.") from None
            raise
        assert message_id is not None  # nothing can skip it: it has no ``unless``
        await self._tell_cost(job)
        return message_id

    async def _tell_cost(self, job: Job) -> None:
        """The cost and balance, to the owner alone, while the interaction's token lasts.

        Never raises: the result is posted, and this line is a courtesy.
        """
        if not job.interaction_token or not token_valid(job, self.bot.clock()):
            return
        try:
            balance = await self.bot.ledger.balance(job.owner_id)
            await interaction_webhook(self.bot, job).send(cost_text(job.cost, balance),
                                                          ephemeral=True)
        except Exception:
            log.warning("job %s: could not tell its owner the cost", job.id, exc_info=True)

    async def ended(self, job: Job, ending: Ending) -> None:
        await self._finish_progress(job.id)
        icon = "🚫" if ending.state == JobState.CANCELLED else "⚠️"
        text = f"{icon} {ending_text(ending, job.id)}"
        await self._edit(job, lambda: {"content": text, "embed": None,
                                       "view": None, "attachments": []}, shows=Shows.ENDING)

    # -- editing the job's message ----------------------------------------------------------------

    async def _edit(self, job: Job, fields: Callable[[], Fields],
                    unless: Callable[[], bool] | None = None,
                    shows: Shows = Shows.STATUS) -> int | None:
        """Edit the job's message by token while valid, by bot token after; one edit at a time.
        Returns the id of the message edited (or posted), None if ``unless`` skipped it.

        ``fields`` is called per attempt because a discord.File can be sent only once. A result
        or an ending is the job's last update.
        """
        job = await self.bot.jobs.message_ready(job)
        lock = self._locks.setdefault(job.id, asyncio.Lock())
        try:
            async with lock:
                if unless is not None and unless():
                    return None
                return await self._send(job, fields, shows)
        finally:
            if shows is not Shows.STATUS and not lock.locked():
                self._locks.pop(job.id, None)

    async def _send(self, job: Job, fields: Callable[[], Fields], shows: Shows) -> int:
        if job.interaction_token and job.message_id and token_valid(job, self.bot.clock()):
            webhook = interaction_webhook(self.bot, job)
            try:
                await webhook.edit_message(job.message_id, **fields())
                return job.message_id
            except discord.HTTPException as error:
                if error.status not in (401, 404):
                    raise
                log.info("job %s: interaction token no longer works (%s); using the bot's "
                         "channel message", job.id, error.status)
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        if job.message_id is not None:
            with contextlib.suppress(discord.NotFound):
                await channel.get_partial_message(job.message_id).edit(**fields())
                return job.message_id
        # A new message: "remove this" values (None, []) mean simply "leave it out".
        values = {name: value for name, value in fields().items() if value is not None}
        files = values.pop("attachments", [])
        message = await channel.send(files=files, nonce=message_nonce(job.id, shows), **values)
        await self.bot.jobs.attach_message(job.id, message.id)
        job.message_id = message.id
        return message.id


def interaction_webhook(bot: ImagineBot, job: Job) -> discord.Webhook:
    """The webhook of the job's interaction, as ``Interaction.followup`` makes it."""
    assert job.interaction_token is not None
    webhook = discord.Webhook.partial(job.application_id, job.interaction_token, client=bot)
    webhook.type = discord.WebhookType.application  # partial() assumes an incoming webhook
    return webhook


def token_valid(job: Job, now: Any) -> bool:
    created = discord.utils.snowflake_time(job.interaction_id)
    return bool(now < created + TOKEN_LIFETIME - TOKEN_MARGIN)


def progress_fields(job: Job, event: Progress) -> Fields:
    bar_width = 12
    filled = round(bar_width * event.step / max(1, event.total))
    text = (f"🎨 Generating… step {event.step}/{event.total} "
            f"`{'█' * filled}{'░' * (bar_width - filled)}`")
    values: Fields = {"content": text, "view": cancel_view(job.id)}
    if event.preview is not None:
        values["attachments"] = [discord.File(io.BytesIO(event.preview), "preview.png")]
    return values


def result_embed(job: Job, filename: str, note: str = "") -> discord.Embed:
    """The result's parameters, within Discord's limits on embeds, and public: no balance.

    The member's own texts are escaped, so they show as typed (no masked links, no mentions).
    When everything does not fit, the model's warnings are cut first, then the prompts, each
    with an ellipsis; the PNGs (and 📋 Params) carry the full texts.
    """
    request = job.request
    result = job.result or {}
    metadata = result.get("metadata", {})
    seeds = [image["seed"] for image in result.get("images", [])] or [request.seed]
    fields = [
        ("Seed", _clip(", ".join(str(seed) for seed in seeds), FIELD_VALUE_MAX)),
        ("Sampler", str(metadata.get("sampler", request.sampler))),
        ("Steps", str(metadata.get("steps", request.steps))),
        ("CFG", f"{float(metadata.get('cfg', request.cfg or 0)):g}"),
        ("Model", shown(model_name(metadata, request), MODEL_NAME_MAX)),
        ("Size", image_size(result, request)),
        *what_else_ran(request),
        ("Time", f"{float(result.get('seconds', 0)):.1f} s"),
        ("Cost", credits(job.cost)),
    ]
    footer = f"job {job.id}" + (f"{FOOTER_SEPARATOR}re-encoded: {note}" if note else "")
    room = EMBED_TOTAL_MAX - len(footer) - sum(len(name) + len(value) for name, value in fields)
    embed = discord.Embed(description=shown(request.prompt, min(DESCRIPTION_MAX, room)),
                          colour=EMBED_COLOUR)
    room -= len(embed.description or "")
    if request.negative_prompt:
        name = "Negative"
        value = shown(request.negative_prompt, min(FIELD_VALUE_MAX, room - len(name)))
        embed.add_field(name=name, value=value, inline=False)
        room -= len(name) + len(value)
    for name, value in fields:
        embed.add_field(name=name, value=value)
    warnings = FOOTER_SEPARATOR.join(map(str, metadata.get("warnings") or []))
    if warnings:
        footer += _clip(FOOTER_SEPARATOR + warnings, min(FOOTER_MAX - len(footer), room))
    embed.set_footer(text=footer)
    embed.set_image(url=f"attachment://{filename}")
    return embed


def image_size(result: dict[str, Any], request: GenerationRequest) -> str:
    """What was made (an upscale is larger than its request says), else what was asked."""
    images = result.get("images") or [{}]
    return f"{images[0].get('width', request.width)}x{images[0].get('height', request.height)}"


def what_else_ran(request: GenerationRequest) -> list[tuple[str, str]]:
    """The style and image prompt, when the request had them (prompt flags show as the
    fields they set: the prompt without them, its size, seed, steps and so on)."""
    fields: list[tuple[str, str]] = []
    if request.style:
        fields.append(("Style", shown(request.style, MODEL_NAME_MAX)))
    if request.source_image is not None:
        fields.append(("Image prompt", f"strength {request.strength or 0:g}"))
    return fields


def minimal_embed(job: Job, filename: str) -> discord.Embed:
    """A result whose full embed Discord refused: the image and the job id, nothing else."""
    embed = discord.Embed(description="The details of this result are too long to show "
                          "here; its PNG files carry them in full.", colour=EMBED_COLOUR)
    embed.set_image(url=f"attachment://{filename}")
    embed.set_footer(text=f"job {job.id}")
    return embed


def model_name(metadata: dict[str, Any], request: GenerationRequest) -> str:
    """The model's display name; a path (a result of an older version) shows its last part."""
    return hide_paths(str(metadata.get("model") or request.model or "?"))


def shown(text: str, limit: int) -> str:
    """A member's ``text`` as an embed shows it literally, in at most ``limit`` characters:
    markdown and mentions escaped, cut with an ellipsis (never between an escape's backslash
    and its character)."""
    escaped = MARKDOWN.sub(r"\\\g<0>", discord.utils.escape_mentions(text))
    escaped = LINE_MARKDOWN.sub(r"\1\\\2", escaped)
    if len(escaped) <= limit:
        return escaped
    if limit < len(ELLIPSIS):
        return ""
    cut = escaped[:limit - len(ELLIPSIS)]
    if (len(cut) - len(cut.rstrip("\\"))) % 2:  # an odd run of backslashes ends in an escape
        cut = cut[:-1]
    return cut + ELLIPSIS


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - len(ELLIPSIS)] + ELLIPSIS if limit >= len(ELLIPSIS) else ""
