"""The Qwen folder's generation_config.json: ``describe`` answers as the original, whose ``from_pretrained`` merges it.

The original's path is rebuilt with transformers itself: ``Qwen2ForCausalLM.from_pretrained`` on the fake Qwen
folder (so transformers reads generation_config.json), the Harmon checkpoint's LLM weights loaded over it, and
``generate(inputs_embeds=..., do_sample=False, max_new_tokens=..., eos_token_id=<|im_end|>)``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import tiny_model, tiny_tokenizer
from PIL import Image
from transformers import GenerationConfig, Qwen2ForCausalLM

import harmon.chat as C
import harmon.loading as L
from harmon import cli
from harmon.config import GenerationDefaults, HarmonConfig, harmon_tiny
from harmon.hf_generation import NEUTRAL, NO_EFFECT, SUPPORTED, read_generation_config
from harmon.loading import read_config
from harmon.pipeline import HarmonPipeline
from harmon.prompts import END_OF_TEXT, IM_END
from harmon.shipped import shipped_model_path

MAX_NEW = 12
SIZE = 64  # the tiny model's size: the releases' 512 px understanding default overflows its 512-position context
QUESTIONS = ("What colour?", "How many circles are there?", "Describe the image in detail.", "Is there a square?")


def qwen_generation_config() -> dict:
    """Qwen2.5-0.5B/1.5B-Instruct's generation_config.json, with the tiny tokenizer's ids for its special tokens."""
    tok = tiny_tokenizer()
    im_end, end_of_text = tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids(END_OF_TEXT)
    return {
        "bos_token_id": end_of_text,
        "pad_token_id": end_of_text,
        "do_sample": True,
        "eos_token_id": [im_end, end_of_text],
        "repetition_penalty": 1.1,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "transformers_version": "4.37.0",
    }


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """Fake released files: harmon .pth, kl16.ckpt and a Hugging Face Qwen folder with generation_config.json."""
    folder = tmp_path_factory.mktemp("official")
    model = tiny_model(seed=0)
    # Wider LLM weights than the default init: the tiny LLM then writes varied answers rather than one token over
    # and over, and the penalty changes some of them.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.llm.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("vae.")}, folder / "harmon.pth")
    torch.save({"model": model.vae.state_dict()}, folder / "kl16.ckpt")
    llm = folder / "qwen"
    model.llm.save_pretrained(str(llm))  # config.json + model.safetensors, as a Qwen folder holds them
    config = json.loads((llm / "config.json").read_text())  # Qwen2.5's context: room for the 512 px images
    (llm / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 32768}))
    tiny_tokenizer().save_pretrained(str(llm))
    (llm / "generation_config.json").write_text(json.dumps(qwen_generation_config(), indent=2) + "\n")
    return folder / "harmon.pth", folder / "kl16.ckpt", llm


@pytest.fixture(autouse=True)
def tiny_widths(monkeypatch):
    """The tiny MAR has a width the releases do not use and a small VAE: teach load_official both."""
    monkeypatch.setitem(L.MAR_HEADS_BY_WIDTH, 64, 4)
    monkeypatch.setattr(L, "VAEConfig", lambda: harmon_tiny().vae)


def cases() -> list[tuple[Image.Image, str]]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(8)]
    return [(image, QUESTIONS[i % len(QUESTIONS)]) for i, image in enumerate(images)]


def original_llm(checkpoint, llm) -> Qwen2ForCausalLM:
    """The LLM as the official code holds it: from_pretrained on the Qwen folder, then the Harmon weights."""
    ref = Qwen2ForCausalLM.from_pretrained(str(llm), dtype=torch.float32).eval()
    sd = torch.load(checkpoint, weights_only=True)
    ref.load_state_dict({k[len("llm.") :]: v for k, v in sd.items() if k.startswith("llm.")}, strict=True)
    return ref


def test_describe_reproduces_the_originals_greedy_answers(official, monkeypatch):
    checkpoint, vae, llm = official
    pipe = HarmonPipeline.from_official(checkpoint, vae, llm, device="cpu", dtype=torch.float32)
    assert pipe.config.generation.repetition_penalty == 1.1
    ref = original_llm(checkpoint, llm)
    assert ref.generation_config.repetition_penalty == 1.1  # transformers merged the file, as in the original
    decoded: list[list[int]] = []  # the token ids describe decodes, before they become text
    iter_decode = C.iter_decode

    def recording(*args, **kwargs):
        decoded.append([])
        for token in iter_decode(*args, **kwargs):
            decoded[-1].append(token)
            yield token

    monkeypatch.setattr(C, "iter_decode", recording)
    changed = 0
    for image, question in cases():
        text = pipe.describe(image, question, max_new_tokens=MAX_NEW, image_size=SIZE)
        embeds = pipe.understanding_inputs(image, question, image_size=SIZE)
        with torch.no_grad():
            kw = dict(inputs_embeds=embeds, do_sample=False, max_new_tokens=MAX_NEW, eos_token_id=pipe.eos_token_id)
            theirs = ref.generate(**kw, pad_token_id=pipe.eos_token_id)[0].tolist()
            plain = ref.generate(**kw, pad_token_id=pipe.eos_token_id, repetition_penalty=1.0)[0].tolist()
        assert decoded[-1] == theirs, question
        shown = theirs[:-1] if theirs and theirs[-1] == pipe.eos_token_id else theirs
        assert text == pipe.tokenizer.decode(shown, skip_special_tokens=True).strip()
        changed += plain != theirs
    assert changed >= 1, "the penalty changes no answer here: this test could not tell the two apart"


def test_convert_keeps_the_penalty_and_describe_flags_follow_it(official, tmp_path, capsys):
    checkpoint, vae, llm = official
    out = tmp_path / "converted"
    args = ["--checkpoint", str(checkpoint), "--vae", str(vae), "--llm", str(llm), "--device", "cpu"]
    assert cli.main(["convert", *args, "-o", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["generation"]["repetition_penalty"] == 1.1
    pipe = HarmonPipeline.from_pretrained(out, device="cpu")
    assert pipe.config.generation.repetition_penalty == 1.1
    # a case whose answer the penalty changes, so that the flags below are told apart
    image, question = next(
        (im, q)
        for im, q in cases()
        if pipe.describe(im, q, max_new_tokens=MAX_NEW, image_size=SIZE)
        != pipe.describe(im, q, max_new_tokens=MAX_NEW, image_size=SIZE, repetition_penalty=1.0)
    )
    image.save(tmp_path / "image.png")
    capsys.readouterr()
    for flags, penalty in (([], None), (["--repetition-penalty", "1"], 1.0), (["--repetition-penalty", "1.1"], 1.1)):
        command = ["describe", str(tmp_path / "image.png"), question, "--model", str(out), "--device", "cpu"]
        assert cli.main([*command, "--max-new-tokens", str(MAX_NEW), "--image-size", str(SIZE), *flags]) == 0
        expected = pipe.describe(image, question, max_new_tokens=MAX_NEW, image_size=SIZE, repetition_penalty=penalty)
        assert capsys.readouterr().out.strip() == expected, flags


def test_configs_without_the_field_load_with_no_penalty(tmp_path):
    path = shipped_model_path()
    if path is not None:  # its config.json as written before the field existed
        raw = json.loads((path / "config.json").read_text())
        del raw["generation"]["repetition_penalty"]
        (tmp_path / "config.json").write_text(json.dumps(raw))
        (tmp_path / "model.safetensors").write_bytes(b"")  # read_config only checks that the weights exist
        assert read_config(tmp_path).generation.repetition_penalty == 1.0
    raw = harmon_tiny().to_dict()
    del raw["generation"]["repetition_penalty"]
    assert HarmonConfig.from_dict(raw).generation.repetition_penalty == 1.0


@pytest.mark.parametrize("value", [0, -1.1, float("inf"), float("nan"), True, "1.1"])
def test_a_bad_recorded_penalty_is_refused_by_name(value):
    with pytest.raises(ValueError, match=r"generation\.repetition_penalty must be a finite number"):
        GenerationDefaults(repetition_penalty=value)


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("{", "generation_config.json is not valid JSON"),
        ("[1.1]", "must hold a JSON object, found list"),
        ('{"repetition_penalty": 0}', "repetition_penalty must be a finite number > 0, got 0"),
        ('{"repetition_penalty": NaN}', "repetition_penalty must be a finite number > 0, got nan"),
        ('{"repetition_penalty": "1.1"}', "repetition_penalty must be a finite number > 0, got '1.1'"),
        ('{"repetition_penalty": true}', "repetition_penalty must be a finite number > 0, got True"),
        ('{"no_repeat_ngram_size": 3}', "no_repeat_ngram_size=3 changes greedy answers"),
        ('{"num_beams": 4}', "num_beams=4 changes greedy answers"),
        ('{"num_beams": true}', "num_beams=True changes greedy answers"),
        ('{"min_new_tokens": 5}', "min_new_tokens=5 changes greedy answers"),
        ('{"suppress_tokens": [3]}', r"suppress_tokens=\[3\] changes greedy answers"),
        ('{"chat_format": "chatml"}', "field 'chat_format' is unknown"),
    ],
)
def test_a_generation_config_that_would_change_answers_silently_is_refused(tmp_path, text, phrase):
    (tmp_path / "generation_config.json").write_text(text)
    with pytest.raises(ValueError, match=phrase):
        read_generation_config(tmp_path)


def test_from_official_refuses_a_file_it_cannot_honour(official, tmp_path):
    checkpoint, vae, llm = official
    copy = tmp_path / "qwen"
    copy.mkdir()
    for f in llm.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "generation_config.json").write_text(json.dumps({**qwen_generation_config(), "no_repeat_ngram_size": 2}))
    with pytest.raises(ValueError, match="no_repeat_ngram_size=2"):
        HarmonPipeline.from_official(checkpoint, vae, copy, device="cpu")


def test_fields_that_leave_greedy_answers_alone_are_accepted(tmp_path):
    assert read_generation_config(tmp_path) == {}  # no file: no penalty
    inert = {"num_beams": 1, "no_repeat_ngram_size": 0, "use_mtp": False, "min_new_tokens": None, "top_k": 50}
    (tmp_path / "generation_config.json").write_text(json.dumps(inert))
    assert read_generation_config(tmp_path) == {}
    (tmp_path / "generation_config.json").write_text(json.dumps({**inert, "repetition_penalty": 2}))
    assert read_generation_config(tmp_path) == {"repetition_penalty": 2.0}


def test_every_field_transformers_knows_is_sorted():
    """A field a newer transformers adds must be placed in one of the groups (else files holding it are refused)."""
    fields = set(GenerationConfig().__dict__)
    groups = (set(SUPPORTED), set(NO_EFFECT), set(NEUTRAL))
    assert not fields - set().union(*groups), sorted(fields - set().union(*groups))
    assert all(not (a & b) for i, a in enumerate(groups) for b in groups[i + 1 :])
