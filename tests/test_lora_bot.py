"""/loras and LoRA refusals in /imagine, end to end on the Discord emulator (no engine)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file
from torch import zeros

from bot.cogs.loras import FIELD_LIMIT, name_list
from tests.support.bot import answer, idle_bot


def _files(folder: Path, *names: str) -> Path:
    folder.mkdir()
    for name in names:
        save_file({"x": zeros(1)}, str(folder / f"{name}.safetensors"))
    return folder


async def test_loras_lists_the_names_a_prompt_can_use(tmp_path):
    loras = _files(tmp_path / "loras", "pixel-art", "Watercolour")
    embeddings = _files(tmp_path / "embeddings", "easynegative")
    async with idle_bot(tmp_path, lora_dir=loras, embeddings_dir=embeddings) as (emu, _):
        message = await answer(emu, await emu.slash(emu.add_user(name="ann"), "loras"))
        assert message.ephemeral
        embed = message.embeds[0]
        assert "<lora:NAME:WEIGHT>" in embed["description"]
        fields = {field["name"]: field["value"] for field in embed["fields"]}
        assert fields == {"LoRAs": "`pixel-art`, `Watercolour`", "Embeddings": "`easynegative`"}


async def test_an_unknown_lora_is_refused_before_anything_is_held(tmp_path):
    loras = _files(tmp_path / "loras", "pixel-art")
    async with idle_bot(tmp_path, lora_dir=loras) as (emu, bot):
        user = emu.add_user(name="bo")
        record = await emu.slash(user, "imagine", {"prompt": "a cat <lora:nosuch:0.7>"})
        message = await emu.wait_for_message(
            lambda m: m.interaction_id == record.id and m.ephemeral, timeout=30)
        assert message.content == ("Unknown LoRA 'nosuch'; the loras command lists the ones "
                                   "available.")
        assert await bot.ledger.pending_holds(user.id) == 0
        assert await bot.ledger.audit() == []


def test_a_long_list_is_cut_with_a_count_of_the_rest():
    names = [f"lora-{i:03}" for i in range(200)]
    text = name_list(names)
    assert len(text) <= FIELD_LIMIT and text.endswith("more")
    shown = text.count("`") // 2
    assert text.endswith(f" … and {200 - shown} more")
    assert name_list([]) == "None."
