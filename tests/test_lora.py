"""LoRAs and embeddings against plain diffusers, and every refusal, on tiny models.

The files are made here: random LoRAs for the tiny models in diffusers (peft) format and with
kohya/A1111 keys, and random textual-inversion embeddings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import save_file

from engine.batching import batch_key
from engine.outputs import a1111_parameters
from engine.request import GenerationRequest, RequestError, validate_request
from engine.runner import Runner
from engine.samplers import make_scheduler
from engine.settings import EngineSettings

PROMPT = "a red fox in the snow"
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")


def lora_tensors(pipe, seed: int, kohya: bool = False) -> dict[str, torch.Tensor]:
    """A random rank-4 LoRA on every attention projection of the UNet and text encoders."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    encoders = ([("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_")]
                if hasattr(pipe, "text_encoder_2") else [("text_encoder", "lora_te_")])
    for component, kohya_prefix in [("unet", "lora_unet_"), *encoders]:
        for name, module in getattr(pipe, component).named_modules():
            if not (isinstance(module, torch.nn.Linear) and name.endswith(ATTENTION)):
                continue
            down = torch.randn(4, module.in_features, generator=generator) * 0.3
            up = torch.randn(module.out_features, 4, generator=generator) * 0.3
            if kohya:  # kohya names the text encoder's modules from text_model
                path = name if component == "unet" else f"text_model.{name}"
                key = kohya_prefix + path.replace(".", "_")
                tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                            f"{key}.alpha": torch.tensor(4.0)}
            else:
                tensors |= {f"{component}.{name}.lora_A.weight": down,
                            f"{component}.{name}.lora_B.weight": up}
    return tensors


def embedding_tensors(pipe, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    width = pipe.text_encoder.config.hidden_size
    if getattr(pipe, "text_encoder_2", None) is not None:
        return {"clip_l": torch.randn(1, width, generator=generator),
                "clip_g": torch.randn(1, pipe.text_encoder_2.config.hidden_size,
                                      generator=generator)}
    return {"emb_params": torch.randn(2, width, generator=generator)}  # two vectors


class Warm:
    """A Runner that reads a LoRA and an embedding folder, and a plain pipeline, per family."""

    def __init__(self, folder: Path, files: Path, other: DiffusionPipeline) -> None:
        self.plain = DiffusionPipeline.from_pretrained(folder)
        self.plain.set_progress_bar_config(disable=True)
        self.config = self.plain.scheduler.config
        loras, embeddings = files / "loras", files / "embeddings"
        loras.mkdir()
        embeddings.mkdir()
        save_file(lora_tensors(self.plain, 1), str(loras / "style.safetensors"))
        save_file(lora_tensors(self.plain, 2), str(loras / "second.safetensors"))
        if not hasattr(self.plain, "text_encoder_2"):
            save_file(lora_tensors(self.plain, 3, kohya=True), str(loras / "kohya.safetensors"))
        save_file(lora_tensors(other, 4), str(loras / "elsewhere.safetensors"))
        save_file({"weight": torch.zeros(2, 2)}, str(loras / "notalora.safetensors"))
        save_file(embedding_tensors(self.plain, 5), str(embeddings / "fluffy.safetensors"))
        save_file(embedding_tensors(other, 6), str(embeddings / "alien.safetensors"))
        self.settings = EngineSettings(model=str(folder), preview_every=0, device="cpu",
                                       lora_dir=loras, embeddings_dir=embeddings)
        self.runner = Runner(self.settings)
        self.lora_dir, self.embeddings_dir = loras, embeddings

    def request(self, prompt: str, **values) -> GenerationRequest:
        return validate_request(GenerationRequest(**{
            "prompt": prompt, "seed": 21, "count": 1, "sampler": "euler", "steps": 3,
            **values}), self.settings)

    def run(self, *requests: GenerationRequest) -> list[np.ndarray]:
        outputs = self.runner.txt2img(list(requests), lambda *_: None, lambda: False)
        return [_array(image) for output in outputs for image in output.images]

    def reference(self, prompt: str, request: GenerationRequest) -> np.ndarray:
        self.plain.scheduler = make_scheduler("euler", self.config, ("euler",))
        image = self.plain(prompt, height=request.height, width=request.width,
                           num_inference_steps=3, guidance_scale=request.cfg,
                           generator=torch.Generator("cpu").manual_seed(21)).images[0]
        return _array(image)


def _array(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


@pytest.fixture(scope="module")
def warm(tiny_model, tmp_path_factory):
    built: dict[str, Warm] = {}

    def get(family: str) -> Warm:
        if family not in built:
            other = DiffusionPipeline.from_pretrained(
                tiny_model("sdxl" if family == "sd15" else "sd15"))
            built[family] = Warm(tiny_model(family), tmp_path_factory.mktemp(family), other)
        return built[family]

    return get


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_lora_at_0_8_is_plain_diffusers_with_that_adapter_weight(warm, family):
    w = warm(family)
    request = w.request(f"{PROMPT} <lora:style:0.8>")
    (image,) = w.run(request)
    w.plain.load_lora_weights(str(w.lora_dir / "style.safetensors"), adapter_name="style")
    try:
        w.plain.set_adapters(["style"], [0.8])
        expected = w.reference(f"{PROMPT} ", request)
    finally:
        w.plain.unload_lora_weights()
    assert np.abs(image - expected).max() <= 1
    # and the LoRA did something, which LoRA off undoes exactly
    (without,) = w.run(w.request(PROMPT))
    assert not np.array_equal(image, without)
    assert np.array_equal(without, w.reference(PROMPT, request))


def test_two_loras_combine_as_diffusers_adapters_do(warm):
    w = warm("sd15")
    request = w.request(f"<lora:kohya:0.5> {PROMPT} <lora:second:0.8>")
    assert [(n.name, n.weight) for n in request.networks] == [("kohya", 0.5), ("second", 0.8)]
    (image,) = w.run(request)
    w.plain.load_lora_weights(str(w.lora_dir / "kohya.safetensors"), adapter_name="a")
    w.plain.load_lora_weights(str(w.lora_dir / "second.safetensors"), adapter_name="b")
    try:
        w.plain.set_adapters(["a", "b"], [0.5, 0.8])
        expected = w.reference(f" {PROMPT} ", request)
    finally:
        w.plain.unload_lora_weights()
    assert np.abs(image - expected).max() <= 1


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_an_embedding_is_plain_diffusers_with_load_textual_inversion(warm, family):
    w = warm(family)
    prompt = f"{PROMPT}, fluffy"
    request = w.request(prompt)
    (network,) = request.networks
    assert (network.kind, network.name) == ("embedding", "fluffy")
    (image,) = w.run(request)
    from safetensors.torch import load_file

    tensors = load_file(str(w.embeddings_dir / "fluffy.safetensors"))
    if family == "sdxl":
        w.plain.load_textual_inversion(tensors["clip_l"], token="fluffy",
                                       text_encoder=w.plain.text_encoder,
                                       tokenizer=w.plain.tokenizer)
        w.plain.load_textual_inversion(tensors["clip_g"], token="fluffy",
                                       text_encoder=w.plain.text_encoder_2,
                                       tokenizer=w.plain.tokenizer_2)
    else:
        w.plain.load_textual_inversion(str(w.embeddings_dir / "fluffy.safetensors"),
                                       token="fluffy")
    expected = w.reference(prompt, request)
    assert np.abs(image - expected).max() <= 1
    (plain_word,) = w.run(w.request(f"{PROMPT}, fuzzy"))
    assert not np.array_equal(image, plain_word)


def test_different_lora_sets_never_share_a_batch(warm):
    w = warm("sd15")
    plain, styled = w.request(PROMPT), w.request(f"{PROMPT} <lora:style:0.8>")
    lighter = w.request(f"{PROMPT} <lora:style:0.5>")
    keys = {batch_key(plain), batch_key(styled), batch_key(lighter)}
    assert len(keys) == 3
    assert batch_key(w.request("a cat <lora:style:0.8>")) == batch_key(styled)
    with pytest.raises(ValueError, match="share"):
        w.runner.txt2img([plain, styled], lambda *_: None, lambda: False)


def test_a_batch_of_two_prompts_with_one_lora_gets_what_each_gets_alone(warm):
    w = warm("sd15")
    first = w.request(f"{PROMPT} <lora:style:0.8>")
    second = w.request("a lighthouse <lora:style:0.8>", seed=40)
    together = w.run(first, second)
    alone = w.run(first) + w.run(second)
    for a, b in zip(together, alone, strict=True):
        assert np.abs(a - b).max() <= 2


def test_the_png_parameters_name_each_file_and_hash(warm):
    w = warm("sd15")
    request = w.request(f"{PROMPT}, fluffy <lora:style:0.8> <lora:second>")
    text = a1111_parameters(request, 21, {})
    hashes = {n.name: n.hash for n in request.networks}
    assert f'Lora hashes: "style: {hashes["style"]}, second: {hashes["second"]}"' in text
    assert f'TI hashes: "fluffy: {hashes["fluffy"]}"' in text
    assert text.startswith(f"{PROMPT}, fluffy <lora:style:0.8> <lora:second>\n")
    assert len(hashes["style"]) == 12


def test_the_request_records_the_networks_and_json_without_them_is_unchanged(warm):
    w = warm("sd15")
    request = w.request(f"{PROMPT} <lora:style:0.8>")
    again = GenerationRequest.model_validate_json(request.model_dump_json())
    assert again.networks == request.networks
    assert "networks" not in w.request(PROMPT).model_dump(mode="json")


@pytest.mark.parametrize(("prompt", "negative", "words"), [
    ("a cat <lora:nosuch:0.8>", "", "unknown LoRA 'nosuch'"),
    ("a cat <lora:notalora>", "", "file notalora is not a LoRA"),
    ("a cat <lora:elsewhere>", "", "LoRA elsewhere is for another kind of model"),
    ("a cat <lora:style:lots>", "", "the weight of LoRA style must be a number"),
    ("a cat <lora:style:99>", "", "the weight of LoRA style must be between -10 and 10"),
    ("a cat <lora:style> <lora:STYLE>", "", "LoRA STYLE is named twice"),
    ("a cat <hypernet:x:1>", "", "<hypernet:...> tags are not supported"),
    ("a cat", "<lora:style>", "LoRA tags belong in the prompt"),
    ("an alien cat", "", "embedding alien is for another kind of model"),
    ("a (cat:1.2.3)", "", "prompt weight '1.2.3' is not a number"),
])
def test_bad_networks_are_refused_in_one_sentence_that_names_them(warm, prompt, negative,
                                                                    words):
    w = warm("sd15")
    with pytest.raises(RequestError) as refused:
        w.request(prompt, negative_prompt=negative)
    message = str(refused.value)
    assert words in message and "\n" not in message


def test_a_file_that_is_not_an_embedding_is_refused(warm):
    w = warm("sd15")
    save_file({"a": torch.zeros(3)}, str(w.embeddings_dir / "broken.safetensors"))
    try:
        with pytest.raises(RequestError, match="file broken is not a textual-inversion"):
            w.request("a broken cat")
    finally:
        (w.embeddings_dir / "broken.safetensors").unlink()


def test_pickled_checkpoints_in_the_folders_are_never_offered_or_loaded(warm):
    """Only .safetensors: a .ckpt/.pt/.bin LoRA or embedding (a pickle: loading it runs code)
    is not a name a prompt can use, even when it sits beside the good files."""
    w = warm("sd15")
    pickles = [w.lora_dir / "evil.ckpt", w.lora_dir / "evil.pt",
               w.embeddings_dir / "wicked.bin"]
    for path in pickles:
        torch.save({"a": torch.zeros(1)}, path)
    try:
        with pytest.raises(RequestError, match="evil"):
            w.request(f"{PROMPT} <lora:evil:0.5>")
        request = w.request(f"{PROMPT} wicked")  # a plain word, not an embedding
        assert request.networks == ()
    finally:
        for path in pickles:
            path.unlink()


def test_a_changed_file_refuses_an_exact_remake(warm):
    w = warm("sd15")
    request = w.request(f"{PROMPT} <lora:second:0.8>")
    path = w.lora_dir / "second.safetensors"
    original = path.read_bytes()
    save_file(lora_tensors(w.plain, 9), str(path))
    try:
        with pytest.raises(RequestError, match="LoRA second has changed"):
            validate_request(request, w.settings)
        # a worker that has not loaded it yet refuses too (one that has runs what was recorded)
        with pytest.raises(RequestError, match="LoRA second has changed"):
            Runner(w.settings).txt2img([request], lambda *_: None, lambda: False)
    finally:
        path.write_bytes(original)


def test_loras_are_refused_when_the_models_run_in_fp8(warm):
    """peft adds LoRA layers to nn.Linear only, which IMAGINEBOT_QUANTIZE=fp8 replaces: the
    member hears so at validation, before anything is charged, not as an engine error."""
    w = warm("sd15")
    prompt = f"{PROMPT} <lora:style:0.8>"
    validate_request(GenerationRequest(prompt=prompt), w.settings)
    fp8 = w.settings.model_copy(update={"quantize": "fp8", "tier": "lossy"})
    with pytest.raises(RequestError, match="LoRAs are off on this bot: it runs its models in "
                                           "FP8"):
        validate_request(GenerationRequest(prompt=prompt), fp8)
    validate_request(GenerationRequest(prompt=PROMPT), fp8)  # the rest still runs


def test_t5_families_refuse_loras_and_weights(tiny_model):
    settings = EngineSettings(model=str(tiny_model("flux")), device="cpu")
    for prompt, words in (("a cat <lora:style>", "LoRAs work here only with Stable Diffusion"),
                          ("a (cat:1.3)", "has no (word:1.2) weights")):
        with pytest.raises(RequestError, match=words.replace("(", r"\(").replace(")", r"\)")):
            validate_request(GenerationRequest(prompt=prompt), settings)
    # parentheses without a number are words to T5
    validate_request(GenerationRequest(prompt="a cat (cute)"), settings)


def test_loras_reach_a_unet_whose_qkv_projections_were_fused(warm):
    """The fast tier on CUDA (engine.speed.optimise) fuses Q, K and V into one matmul, which
    LoRA layers on to_q/to_k/to_v would miss; loading a LoRA unfuses them first, and a second,
    different LoRA loads into the unfused UNet too."""
    w = warm("sd15")
    runner = Runner(w.settings)
    runner.pipeline(w.settings.model).unet.fuse_qkv_projections()
    for tag in ("<lora:style:0.8>", "<lora:second:0.8>"):
        request = w.request(f"{PROMPT} {tag}")
        outputs = runner.txt2img([request], lambda *_: None, lambda: False)
        (expected,) = w.run(request)
        assert np.abs(_array(outputs[0].images[0]) - expected).max() <= 1


def test_img2img_passes_use_the_requests_lora_too(warm):
    """The hires-fix upscaler and image prompts run img2img from the same request."""
    from diffusers import AutoPipelineForImage2Image
    from PIL import Image

    w = warm("sd15")
    request = w.request(f"{PROMPT} <lora:style:0.8>")
    source = Image.new("RGB", (32, 32), (200, 40, 40))
    (image,) = w.runner.img2img(request, source, 0.6, lambda *_: None, lambda: False)
    w.plain.load_lora_weights(str(w.lora_dir / "style.safetensors"), adapter_name="style")
    try:
        w.plain.set_adapters(["style"], [0.8])
        pipe = AutoPipelineForImage2Image.from_pipe(w.plain)
        pipe.scheduler = make_scheduler("euler", w.config, ("euler",))
        expected = pipe([f"{PROMPT} "], image=source, strength=0.6, num_inference_steps=3,
                        guidance_scale=request.cfg,
                        generator=[torch.Generator("cpu").manual_seed(21)]).images[0]
    finally:
        w.plain.unload_lora_weights()
    assert np.abs(_array(image) - _array(expected)).max() <= 1
    (without,) = w.runner.img2img(w.request(PROMPT), source, 0.6, lambda *_: None,
                                  lambda: False)
    assert not np.array_equal(_array(image), _array(without))
