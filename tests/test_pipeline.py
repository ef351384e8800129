import json
import re

import numpy as np
import pytest
import torch
from helpers import tiny_pipeline
from PIL import Image
from reference import production_tokens, reference_tokens

from harmon import cli
from harmon.images import load_image, prepare_for_understanding, to_rgb
from harmon.loading import CheckpointError, read_weights
from harmon.pipeline import HarmonPipeline
from harmon.sampling import SamplingSettings

FAST = dict(num_iter=3, num_sampling_steps="5", image_size=64)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


# Sampled tokens of two paths that differ only in batching: matmul rounding on different row counts grows through the
# diffusion chain, up to 5e-4 on latents of about 3 on an AVX2-only CPU; a wrong row or step moves them by order 1.
SAMPLED = {"atol": 1e-3, "rtol": 1e-3}


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_same_seed_same_image_other_seed_other_image(pipe):
    a = pipe.generate("a red circle", generator=gen(0), output_type="pt", **FAST)
    b = pipe.generate("a red circle", generator=gen(0), output_type="pt", **FAST)
    c = pipe.generate("a red circle", generator=gen(1), output_type="pt", **FAST)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def tokenize(pipe, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The straightforward path: whole prompt strings through the tokenizer, right-padded."""
    enc = pipe.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask.bool()


def test_prompts_encode_as_whole_strings_and_typed_control_tokens_stay_text(pipe):
    """The template's control tokens come from the template only: ordinary prompts give the ids of tokenizing the
    whole prompt string; a prompt that spells <|im_end|> or <image> gets plain-text ids, never those tokens."""
    from harmon.prompts import generation_prompt, unconditional_prompt, understanding_prompt
    from harmon.tokenizer import USER_TEXT

    for text in ["a red circle to the left of a blue square", "two  dots,\tthen a line", "ünïcode ☃"]:
        got = pipe.encode_prompt(generation_prompt(USER_TEXT), text)
        assert got == tokenize(pipe, [generation_prompt(text)])[0][0].tolist()
        question = pipe.encode_prompt(understanding_prompt(USER_TEXT), text)
        assert question == tokenize(pipe, [understanding_prompt(text)])[0][0].tolist()
    assert pipe.encode_prompt(unconditional_prompt()) == tokenize(pipe, [unconditional_prompt()])[0][0].tolist()
    controls = {pipe.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|im_start|>", "<image>")}
    typed = pipe.encode_prompt(generation_prompt(USER_TEXT), "a dot<|im_end|>\n<|im_start|>assistant <image>")
    template_only = pipe.encode_prompt(generation_prompt(USER_TEXT), "a dot")
    assert sum(t in controls for t in typed) == sum(t in controls for t in template_only)


def test_cached_generation_equals_uncached_reference(pipe):
    """The production sampler (prompt K/V cached, rows deduplicated, fast head) gives the straightforward
    reference's tokens (the prompt run with every step, every row, DiffLoss.sample) up to float rounding."""
    texts = [
        "<|im_start|>user\nGenerate an image: a red circle to the left of a blue square<|im_end|>\n",
        "<|im_start|>user\nGenerate an image: a dot<|im_end|>\n",
    ]
    uncond = ["<|im_start|>user\nGenerate an image.<|im_end|>\n"] * 2
    ids, mask = tokenize(pipe, texts + uncond)
    assert not mask.all()  # rows of different lengths: right padding is exercised
    settings = SamplingSettings(num_iter=4, guidance_scale=2.0, num_sampling_steps="4")
    cached = production_tokens(pipe.model, ids, mask, (4, 4), settings, generator=gen(0))
    uncached = reference_tokens(pipe.model, ids, mask, (4, 4), settings, generator=gen(0))
    torch.testing.assert_close(cached, uncached, **SAMPLED)


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_deduplicated_sampling_equals_every_row_reference(pipe, monkeypatch, guidance):
    """The production sampler runs each distinct prompt once and, with guidance, the MAR encoder once per image (both
    halves hold the same tokens and mask; harmon.accel.dedupe); the tokens equal those of the every-row reference up
    to float rounding. Two images of each of two prompts (and with guidance the shared unconditional prompt) give
    repeated rows: with guidance the prompt runs on 3 distinct rows of 8 and the encoder on 4; without, on 2 of 4
    and 4."""
    cond = ["<|im_start|>user\nGenerate an image: a red circle<|im_end|>\n"] * 2
    cond += ["<|im_start|>user\nGenerate an image: a blue square above a green dot<|im_end|>\n"] * 2
    uncond = ["<|im_start|>user\nGenerate an image.<|im_end|>\n"] * 4 if guidance != 1.0 else []
    ids, mask = tokenize(pipe, cond + uncond)
    settings = SamplingSettings(num_iter=4, guidance_scale=guidance, num_sampling_steps="4")
    model = pipe.model
    seen = {"prompt": [], "encoder": []}
    real_llm, real_enc = model.llm.model.forward, model.mar.forward_encoder
    monkeypatch.setattr(
        model.llm.model,
        "forward",
        lambda *a, **k: seen["prompt"].append(k["inputs_embeds"].shape[0]) or real_llm(*a, **k),
    )
    monkeypatch.setattr(
        model.mar, "forward_encoder", lambda x, *a, **k: seen["encoder"].append(x.shape[0]) or real_enc(x, *a, **k)
    )
    fast = production_tokens(model, ids, mask, (4, 4), settings, generator=gen(0))
    assert seen["prompt"][0] == (3 if guidance != 1.0 else 2) and set(seen["encoder"]) == {4}
    seen["prompt"].clear(), seen["encoder"].clear()
    reference = reference_tokens(model, ids, mask, (4, 4), settings, generator=gen(0))
    assert seen["prompt"][0] == len(cond + uncond) and set(seen["encoder"]) == {len(cond + uncond)}
    torch.testing.assert_close(fast, reference, **SAMPLED)


def test_packed_linears_give_the_plain_layers_images(pipe, monkeypatch):
    """generate runs its Linear layers with packed weights on CPU float32 (harmon.accel.linear): the same latents
    up to float rounding as with plain layers. describe and describe_many decode with the LLM's layers packed and
    answer the same either way."""
    from harmon.accel import linear as accel_linear

    if not accel_linear.available():
        pytest.skip("torch built without the oneDNN linear ops")
    monkeypatch.setattr(accel_linear, "MIN_ELEMENTS", 0)  # this test model's layers are all below the threshold
    calls = []
    real = accel_linear.PackedForward.__call__
    monkeypatch.setattr(accel_linear.PackedForward, "__call__", lambda self, x: calls.append(1) or real(self, x))
    settings = dict(output_type="latent", **{**FAST, "num_iter": 4})
    packed = pipe.generate("a red circle", generator=gen(0), **settings)
    assert calls  # the packed route really ran
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    answers = []
    for route in (
        lambda: [pipe.describe(image, "What colour?", max_new_tokens=6)],
        lambda: pipe.describe_many([image, image], ["What colour?", "Describe the image."], max_new_tokens=6),
    ):
        calls.clear()
        answers.append(route())
        assert calls  # the LLM's layers packed while decoding
    packed_left = [m for m in pipe.model.modules() if isinstance(m.__dict__.get("forward"), accel_linear.PackedForward)]
    assert not packed_left  # and plain again afterwards
    monkeypatch.setattr(accel_linear, "ENABLED", False)
    calls.clear()
    plain = pipe.generate("a red circle", generator=gen(0), **settings)
    assert [pipe.describe(image, "What colour?", max_new_tokens=6)] == answers[0]
    assert pipe.describe_many([image, image], ["What colour?", "Describe the image."], max_new_tokens=6) == answers[1]
    assert not calls
    torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-4)


def test_output_types_and_batching(pipe):
    ims = pipe.generate(["a red circle", "a blue square"], num_images_per_prompt=2, generator=gen(0), **FAST)
    assert len(ims) == 4 and all(im.size == (64, 64) and im.mode == "RGB" for im in ims)
    lat = pipe.generate("x", output_type="latent", generator=gen(0), **FAST)
    assert lat.shape == (1, 16, 4, 4)
    big = pipe.generate("x", output_type="pt", generator=gen(0), **{**FAST, "image_size": 96})
    assert big.shape == (1, 3, 96, 96)
    no_cfg = pipe.generate("x", guidance_scale=1.0, generator=gen(0), cfg_schedule="linear", **FAST)
    assert len(no_cfg) == 1
    linear = pipe.generate("x", cfg_schedule="linear", generator=gen(0), **FAST)
    assert len(linear) == 1


def test_first_prompt_images_do_not_depend_on_batch_companions(pipe):
    # Prompt-major order: with the same seed the first image's orders/noise come first only for one prompt, so
    # instead check that prompt order is respected: swapping the prompts swaps nothing silently.
    one = pipe.generate(["a red circle"], generator=gen(0), output_type="pt", **FAST)
    assert one.shape[0] == 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(image_size=70), "multiple of 16"),
        (dict(guidance_scale=0.5), "guidance_scale"),
        (dict(num_iter=0), "num_iter"),
        (dict(cfg_schedule="cubic"), "cfg_schedule"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt"),
        (dict(output_type="jpeg"), "output_type"),
    ],
)
def test_generate_rejects_bad_settings(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe.generate("a red circle", **kwargs)


def test_generate_rejects_empty_prompt_list(pipe):
    with pytest.raises(ValueError, match="empty"):
        pipe.generate([])
    with pytest.raises(TypeError):
        pipe.generate([3])


def test_describe_returns_text_and_is_deterministic(pipe):
    image = Image.new("RGB", (80, 50), (200, 30, 30))
    a = pipe.describe(image, "How many circles are there?", max_new_tokens=6)
    b = pipe.describe(image, "How many circles are there?", max_new_tokens=6)
    assert isinstance(a, str) and a == b
    s1 = pipe.describe(image, "What?", max_new_tokens=6, do_sample=True, generator=gen(0))
    s2 = pipe.describe(image, "What?", max_new_tokens=6, do_sample=True, generator=gen(0))
    assert s1 == s2


def test_understanding_inputs_layout(pipe):
    embeds = pipe.understanding_inputs(Image.new("RGB", (64, 64)), "Hi?")
    n_img = 16 + pipe.model.buffer_size
    before = pipe.tokenizer("<|im_start|>user\n", add_special_tokens=False).input_ids
    after = pipe.tokenizer("\nHi?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).input_ids
    assert embeds.shape == (1, len(before) + n_img + len(after), pipe.model.config.llm_hidden_size)


def test_describe_errors(pipe, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read image"):
        pipe.describe(bad, "What?")
    with pytest.raises(FileNotFoundError):
        pipe.describe(tmp_path / "missing.png", "What?")
    with pytest.raises(ValueError, match="question"):
        pipe.describe(Image.new("RGB", (8, 8)), "   ")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "1", "CMYK", "P", "I;16", "I", "F", "YCbCr"])
def test_any_image_mode_converts_to_rgb(mode):
    base = Image.fromarray((np.arange(64 * 48 * 3) % 251).astype(np.uint8).reshape(48, 64, 3), "RGB")
    if mode == "I;16":
        im = Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16))
        assert im.mode == "I;16"
    elif mode == "I":
        im = Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 1000).astype(np.int32))
    elif mode == "F":
        im = Image.fromarray(np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64))
    else:
        im = base.convert(mode)
    rgb = to_rgb(im)
    assert rgb.mode == "RGB" and rgb.size == (64, 48)
    arr = np.asarray(rgb)
    if mode in ("I;16", "I", "F"):
        assert arr.max() > 200 and arr.min() < 30  # rescaled, not clipped to white
    x = prepare_for_understanding(im, 64)
    assert x.shape == (1, 3, 64, 64) and x.min() >= -1 and x.max() <= 1


def test_transparent_pixels_become_white():
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(to_rgb(im))[0, 0].tolist() == [255, 255, 255]
    half = Image.new("LA", (4, 4), (0, 128))  # black at half opacity over white
    assert np.asarray(to_rgb(half))[0, 0].tolist() == [127, 127, 127]


def test_an_image_over_pillows_limit_is_named(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is over twice the limit: Pillow refuses it
    with pytest.raises(ValueError, match=r"big\.png is larger than Pillow's safety limit"):
        load_image(tmp_path / "big.png")


def test_padding_to_square_is_centered_gray():
    im = Image.new("RGB", (64, 32), (255, 255, 255))
    x = prepare_for_understanding(im, 64)
    assert torch.allclose(x[0, :, 0, 32], torch.full((3,), 127 / 255 * 2 - 1), atol=1e-6)
    assert torch.allclose(x[0, :, 32, 32], torch.ones(3), atol=1e-6)


def test_save_load_roundtrip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    loaded = HarmonPipeline.from_pretrained(tmp_path / "m", device="cpu")
    for (k, v), (k2, v2) in zip(pipe.model.state_dict().items(), loaded.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert loaded.model.llm.lm_head.weight is loaded.model.llm.model.embed_tokens.weight
    a = pipe.generate("a red circle", generator=gen(3), output_type="pt", **FAST)
    b = loaded.generate("a red circle", generator=gen(3), output_type="pt", **FAST)
    assert torch.equal(a, b)
    image = Image.new("RGB", (64, 64), (0, 0, 255))
    assert pipe.describe(image, "What?", max_new_tokens=5) == loaded.describe(image, "What?", max_new_tokens=5)


def _write_official_files(pipe, folder):
    sd = {k: v for k, v in pipe.model.state_dict().items() if not k.startswith("vae.")}
    torch.save(sd, folder / "harmon_tiny.pth")
    torch.save({"model": pipe.model.vae.state_dict(), "epoch": 3}, folder / "kl16.ckpt")
    llm = folder / "qwen"
    llm.mkdir()
    (llm / "config.json").write_text(
        json.dumps(
            {
                **pipe.model.config.llm,
                "max_position_embeddings": 32768,  # Qwen2.5's context: room for the 512 px default images
                "architectures": ["Qwen2ForCausalLM"],
                "model_type": "qwen2",
                "torch_dtype": "bfloat16",
            }
        )
    )
    pipe.tokenizer.save_pretrained(str(llm))
    return folder / "harmon_tiny.pth", folder / "kl16.ckpt", llm


def test_from_official_files(pipe, tmp_path, monkeypatch):
    import harmon.loading as L

    ckpt, vae, llm = _write_official_files(pipe, tmp_path)
    # The tiny MAR has widths the releases do not use; teach the head-count table about it for this test.
    monkeypatch.setitem(L.MAR_HEADS_BY_WIDTH, 64, 4)
    loaded = HarmonPipeline.from_official(ckpt, vae, llm, device="cpu", dtype=torch.float32, vae_config=pipe.config.vae)
    assert loaded.model.config.mar.encoder_depth == pipe.model.config.mar.encoder_depth
    a = pipe.generate("a red circle", generator=gen(3), output_type="pt", **FAST)
    b = loaded.generate("a red circle", generator=gen(3), output_type="pt", **FAST)
    torch.testing.assert_close(a, b)


def test_checkpoint_with_missing_key_is_refused(pipe, tmp_path, monkeypatch):
    import harmon.loading as L

    ckpt, vae, llm = _write_official_files(pipe, tmp_path)
    sd = torch.load(ckpt, weights_only=True)
    sd.pop("mar.decoder_norm.weight")
    sd["llm.surprise"] = torch.zeros(2)
    torch.save(sd, ckpt)
    monkeypatch.setitem(L.MAR_HEADS_BY_WIDTH, 64, 4)
    with pytest.raises(CheckpointError, match=r"mar.decoder_norm.weight") as info:
        HarmonPipeline.from_official(ckpt, vae, llm, device="cpu", vae_config=pipe.config.vae)
    assert "llm.surprise" in str(info.value)


class Sneaky:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": Sneaky()}, path)
    with pytest.raises(ValueError, match="pickled code"):
        read_weights(path)


def test_cli_generate_and_describe(pipe, tmp_path, capsys):
    pipe.save_pretrained(tmp_path / "m")
    out = tmp_path / "img.png"
    rc = cli.main(
        [
            "generate",
            "a red circle",
            "-o",
            str(out),
            "--model",
            str(tmp_path / "m"),
            "--num-iter",
            "2",
            "--diffusion-steps",
            "3",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0 and Image.open(out).size == (64, 64)
    rc = cli.main(["describe", str(out), "How many circles?", "--model", str(tmp_path / "m"), "--max-new-tokens", "4"])
    assert rc == 0
    rc = cli.main(["generate", "x", "--model", str(tmp_path / "m"), "--image-size", "20"])
    assert rc == 2 and "multiple of 16" in capsys.readouterr().err


def test_bfloat16_on_cpu_runs_and_keeps_fp32_chain():
    pipe = tiny_pipeline()
    ref = pipe.generate("a red circle", generator=gen(0), output_type="latent", **FAST)
    pipe.to(dtype=torch.bfloat16)
    assert pipe.model.dtype == torch.bfloat16
    assert pipe.model.llm.model.rotary_emb.inv_freq.dtype == torch.float32  # rotary tables are never rounded
    lat = pipe.generate("a red circle", generator=gen(0), output_type="latent", **FAST)
    assert lat.dtype == torch.bfloat16 and lat.shape == ref.shape
    assert torch.isfinite(lat.float()).all()
    assert isinstance(pipe.describe(Image.new("RGB", (64, 64)), "What?", max_new_tokens=3), str)


@pytest.mark.slow
def test_compiled_generation_gives_the_eager_images_and_follows_weight_changes(pipe, monkeypatch):
    """generate(compile=True) runs the diffusion MLP through torch.compile with its weights frozen into the graph:
    the same latents as the eager path up to float rounding. A frozen graph keeps the weights it was compiled with
    and dynamo's guards do not see in-place changes, so it is compiled again when the weights change: after a
    change, the images match the eager path's with the new weights. Tolerance
    1e-3: the compiled GEMMs sum in another order, and 20 chained diffusion steps amplify that to ~2e-4 relative here
    (a stale weight moves the latents by far more, as the second half checks)."""
    import shutil

    from harmon.accel import compile as compiling

    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    calls = []
    real = compiling.FrozenCompiled.__call__
    monkeypatch.setattr(compiling.FrozenCompiled, "__call__", lambda self, *a: calls.append(self) or real(self, *a))
    settings = dict(output_type="latent", **{**FAST, "num_iter": 4})
    prompts = ["a red circle", "a blue square above a green dot"]
    mar = pipe.model.mar
    eager = pipe.generate(prompts, generator=gen(0), **settings)
    assert not calls
    compiled = pipe.generate(prompts, generator=gen(0), compile=True, **settings)
    pieces = {id(piece.module): piece for piece in calls}
    assert set(pieces) == {id(mar.diffloss.net)}  # the compiled route ran
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)
    calls.clear()
    pipe.generate(prompts, generator=gen(0), compile=True, **settings)
    assert all(pieces[id(piece.module)] is piece for piece in calls)  # unchanged weights: compiled once
    changed = list(mar.diffloss.net.parameters())
    saved = [p.detach().clone() for p in changed]
    try:
        with torch.no_grad():
            for p in changed:
                p.add_(0.05 * torch.randn(p.shape, generator=gen(1)))
        eager_new = pipe.generate(prompts, generator=gen(0), **settings)
        assert not torch.allclose(eager_new, eager, rtol=1e-2, atol=1e-2)  # the change matters to the images
        calls.clear()
        compiled_new = pipe.generate(prompts, generator=gen(0), compile=True, **settings)
        torch.testing.assert_close(compiled_new, eager_new, rtol=1e-3, atol=1e-3)
        assert calls and not any(pieces[id(piece.module)] is piece for piece in calls)  # compiled again
    finally:
        with torch.no_grad():
            for p, old in zip(changed, saved):
                p.copy_(old)


@pytest.mark.parametrize(
    ("setting", "phrase"),
    [
        ({"temperature": -0.5}, "temperature must be a finite number >= 0"),
        ({"temperature": float("inf")}, "temperature must be a finite number >= 0"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"top_p": 2.0}, "top_p must be in (0, 1]"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be a finite number > 0"),
        ({"repetition_penalty": float("nan")}, "repetition_penalty must be a finite number > 0"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    ],
)
def test_describe_names_a_bad_decoding_setting(pipe, setting, phrase):
    with pytest.raises(ValueError, match=re.escape(phrase)):
        pipe.describe(Image.new("RGB", (64, 64)), "What?", do_sample=True, **setting)
