"""Broken model config.json files (issue item 7): loaded by ``harmon generate`` / ``convert`` and by the API.

Every refusal must name config.json (the user's file) or the field at fault; a section that is missing must not be
filled with the 0.5B defaults (which then fail on the weights with a page of key names, or load silently).
"""

from __future__ import annotations

import json
import math

from corpus_case import Case, Ctx, api, cli
from corpus_files import folder, with_config, with_config_bytes

from harmon.config import HarmonConfig

CONFIG = "{ws}/m/config.json"
GEN = ["generate", "a red circle", "-o", "{ws}/x.png", "--model", "{ws}/m"]
CONVERT = ["convert", "--model", "{ws}/m", "-o", "{ws}/out"]


def drop(path: str):
    """An edit removing the dotted ``path`` of the config."""

    def edit(c: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            c = c[p]
        del c[last]

    return edit


def put(path: str, value):
    """An edit setting the dotted ``path`` of the config to ``value``."""

    def edit(c: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            c = c[p]
        c[last] = value

    return edit


def generate_with(id: str, edit, phrase, xfail: str | None = None) -> Case:
    return cli(id, "config", GEN, phrase, setup=with_config(edit), xfail=xfail)


def convert_with(id: str, edit, phrase, xfail: str | None = None) -> Case:
    return cli(id, "config", CONVERT, phrase, setup=with_config(edit), xfail=xfail)


def shipped_dict(ctx: Ctx, **changes) -> dict:
    """The shared model's config as HarmonConfig.from_dict takes it, with top-level ``changes``."""
    raw = json.loads((ctx.model / "config.json").read_text())
    raw.pop("format"), raw.pop("format_version")
    return {**raw, **changes}


def generation_dict(ctx: Ctx, **changes) -> dict:
    d = shipped_dict(ctx)
    return {**d, "generation": {**d["generation"], **changes}}


FILES = [
    cli(
        "config-invalid-json",
        "config",
        GEN,
        CONFIG,
        setup=with_config_bytes(b'{"llm": {'),
    ),
    cli(
        "config-empty-file",
        "config",
        GEN,
        CONFIG,
        setup=with_config_bytes(b""),
    ),
    cli(
        "config-not-utf8",
        "config",
        GEN,
        CONFIG,
        setup=with_config_bytes(b'{"image_token": "\xff\xfe"}'),
    ),
    cli(
        "config-top-level-list",
        "config",
        GEN,
        (CONFIG, "list"),
        setup=with_config(lambda c: [c]),
    ),
    cli(
        "config-top-level-string",
        "config",
        GEN,
        (CONFIG, "str"),
        setup=with_config(lambda c: "harmon"),
    ),
    cli("config-is-a-folder", "config", GEN, "config.json", setup=lambda ctx: _config_folder(ctx)),
    cli(
        "config-null",
        "config",
        GEN,
        CONFIG,
        setup=with_config_bytes(b"null"),
    ),
]


def _config_folder(ctx: Ctx) -> None:
    with_config_bytes(b"{}")(ctx)
    (ctx.ws / "m" / "config.json").unlink()
    folder("m/config.json")(ctx)


SECTIONS = [
    generate_with(
        "config-missing-llm",
        drop("llm"),
        ("config.json", "llm"),
    ),
    generate_with(
        "config-missing-mar",
        drop("mar"),
        ("config.json", "mar"),
    ),
    generate_with(
        "config-missing-vae",
        drop("vae"),
        ("config.json", "vae"),
    ),
    convert_with(
        "config-missing-generation",
        drop("generation"),
        ("config.json", "generation"),
    ),
    generate_with(
        "config-mar-is-a-word",
        put("mar", "big"),
        "mar",
    ),
    generate_with(
        "config-vae-is-a-number",
        put("vae", 16),
        "vae",
    ),
    generate_with(
        "config-generation-is-a-word",
        put("generation", "fast"),
        "generation",
    ),
    generate_with(
        "config-generation-null",
        put("generation", None),
        "generation",
    ),
    generate_with("config-llm-is-a-word", put("llm", "qwen"), "llm"),
    generate_with("config-llm-without-hidden-size", drop("llm.hidden_size"), "hidden_size"),
    generate_with("config-unknown-top-level-field", put("colour", "red"), "colour"),
    generate_with("config-unknown-generation-field", put("generation.steps", 3), "steps"),
    generate_with("config-unknown-mar-field", put("mar.depth", 3), "depth"),
    generate_with("config-unknown-vae-field", put("vae.layers", 3), "layers"),
    generate_with("config-format-of-another-library", put("format", "diffusers"), "not a harmon config"),
]

TYPES = [
    generate_with(
        "config-num-iter-is-a-string",
        put("generation.num_iter", "8"),
        "num_iter",
    ),
    generate_with(
        "config-image-size-is-a-string",
        put("generation.image_size", "64"),
        "image_size",
    ),
    generate_with(
        "config-guidance-is-a-string",
        put("generation.guidance_scale", "3"),
        "guidance_scale",
    ),
    generate_with("config-image-size-is-a-float", put("generation.image_size", 64.5), "image_size"),
    generate_with(
        "config-vocab-size-is-a-string",
        put("llm.vocab_size", "big"),
        "vocab_size",
    ),
    generate_with(
        "config-hidden-size-negative",
        put("llm.hidden_size", -128),
        "hidden_size",
    ),
    generate_with(
        "config-mar-width-is-a-string",
        put("mar.encoder_dim", "wide"),
        "encoder_dim",
    ),
    generate_with("config-vae-ch-mult-is-a-string", put("vae.ch_mult", "1,1,2"), "ch_mult"),
    generate_with("config-token-dim-mismatch", put("mar.token_dim", 63), "token_dim"),
    generate_with("config-image-size-not-a-multiple", put("generation.image_size", 48), ("image_size", "32")),
    generate_with("config-guidance-nan", put("generation.guidance_scale", math.nan), "guidance_scale"),
    generate_with("config-temperature-negative", put("generation.temperature", -1), "temperature"),
    generate_with(
        "config-max-new-tokens-zero",
        put("generation.max_new_tokens", 0),
        "max_new_tokens",
    ),
    generate_with(
        "config-image-token-empty",
        put("image_token", ""),
        "image_token",
    ),
    generate_with("config-grad-scale-is-a-string", put("grad_scale", "small"), "grad_scale"),
]

API = [
    api(
        "config-api-from-list",
        "config",
        lambda ctx: HarmonConfig.from_dict([]),
        TypeError,
        "list",
    ),
    api(
        "config-api-from-string",
        "config",
        lambda ctx: HarmonConfig.from_dict("tiny"),
        TypeError,
        "str",
    ),
    api(
        "config-api-mar-is-a-word",
        "config",
        lambda ctx: HarmonConfig.from_dict(shipped_dict(ctx, mar="big")),
        (TypeError, ValueError),
        "mar",
    ),
    api(
        "config-api-image-size-absurd",
        "config",
        lambda ctx: HarmonConfig.from_dict(generation_dict(ctx, image_size=1048576)),
        ValueError,
        "image_size",
    ),
    api(
        "config-api-understanding-size-not-a-multiple",
        "config",
        lambda ctx: HarmonConfig.from_dict(generation_dict(ctx, understanding_image_size=48)),
        ValueError,
        "understanding_image_size",
    ),
    api(
        "config-api-load-missing-file",
        "config",
        lambda ctx: HarmonConfig.load(ctx.ws / "nope.json"),
        FileNotFoundError,
        "{ws}/nope.json",
    ),
    api(
        "config-api-load-invalid-json",
        "config",
        lambda ctx: HarmonConfig.load(ctx.ws / "bad.json"),
        ValueError,
        "{ws}/bad.json",
        setup=lambda ctx: ctx.path("bad.json").write_text("{'llm': 1}"),
    ),
]

CASES: list[Case] = [*FILES, *SECTIONS, *TYPES, *API]
