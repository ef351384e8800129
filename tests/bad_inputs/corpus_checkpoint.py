"""Broken weights: corrupt, truncated or empty safetensors, missing / extra / misshaped / mistyped keys, pickles that
carry code, a VAE file where a model belongs, tokenizer files; through ``harmon generate`` and the loading API.

A refusal must name the file (and the key, for a key that does not fit).
"""

from __future__ import annotations

import torch
from corpus_case import Case, Ctx, api, cli
from corpus_files import (
    both,
    file_bytes,
    folder,
    llm_folder,
    model_copy,
    pickle_with_code,
    shipped_weights,
    torch_file,
    truncated_weights,
    with_file,
    with_weights,
)
from safetensors.torch import save_file

from harmon.loading import read_vae_weights, read_weights
from harmon.pipeline import HarmonPipeline

WEIGHTS = "{ws}/m/model.safetensors"
GEN = ["generate", "a red circle", "-o", "{ws}/x.png", "--model", "{ws}/m"]
KEY = "mar.z_proj.weight"


def official(checkpoint: str) -> list[str]:
    """``harmon generate`` on official-format files: ``checkpoint``, a VAE and the LLM folder of the case."""
    return [*GEN[:4], "--checkpoint", checkpoint, "--vae", "{ws}/v.ckpt", "--llm", "{ws}/qwen"]


def vae_only(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if k.startswith("vae.")}


def official_setup(checkpoint_setup):
    """The LLM folder, a VAE file and the checkpoint ``checkpoint_setup`` writes."""
    return both(llm_folder(), torch_file("v.ckpt", lambda ctx: {"model": {}}), checkpoint_setup)


def _truncated_pickle(ctx: Ctx) -> None:
    torch.save({"w": torch.zeros(1000)}, ctx.path("c.pth"))
    data = ctx.path("c.pth").read_bytes()
    ctx.path("c.pth").write_bytes(data[: len(data) // 2])


def _vae_safetensors(ctx: Ctx) -> None:
    save_file(vae_only(shipped_weights(ctx)), str(ctx.path("vae.safetensors")))


OUR_FORMAT = [
    cli(
        "ckpt-truncated-safetensors",
        "checkpoint",
        GEN,
        WEIGHTS,
        setup=truncated_weights(),
    ),
    cli(
        "ckpt-garbage-safetensors",
        "checkpoint",
        GEN,
        WEIGHTS,
        setup=with_file("model.safetensors", b"garbage" * 9),
    ),
    cli(
        "ckpt-empty-safetensors",
        "checkpoint",
        GEN,
        WEIGHTS,
        setup=with_file("model.safetensors", b""),
    ),
    cli(
        "ckpt-pickle-named-safetensors",
        "checkpoint",
        GEN,
        WEIGHTS,
        setup=lambda ctx: (model_copy(ctx), torch.save({"w": torch.zeros(1)}, ctx.ws / "m" / "model.safetensors")),
    ),
    cli("ckpt-missing-safetensors", "checkpoint", GEN, "model.safetensors", setup=with_file("model.safetensors", None)),
    cli(
        "ckpt-safetensors-is-a-folder",
        "checkpoint",
        GEN,
        "model.safetensors",
        setup=lambda ctx: (with_file("model.safetensors", None)(ctx), folder("m/model.safetensors")(ctx)),
    ),
    cli(
        "ckpt-missing-key",
        "checkpoint",
        GEN,
        ("missing keys", KEY),
        setup=with_weights(lambda sd: sd.pop(KEY)),
    ),
    cli(
        "ckpt-extra-key",
        "checkpoint",
        GEN,
        ("unexpected keys", "mar.extra.weight"),
        setup=with_weights(lambda sd: sd.update({"mar.extra.weight": torch.zeros(2)})),
    ),
    cli(
        "ckpt-misshaped-key",
        "checkpoint",
        GEN,
        ("misshaped keys", KEY),
        setup=with_weights(lambda sd: sd.update({KEY: torch.zeros(3, 3)})),
    ),
    cli(
        "ckpt-integer-weights",
        "checkpoint",
        GEN,
        ("dtype", KEY),
        setup=with_weights(lambda sd: sd.update({KEY: sd[KEY].to(torch.int32)})),
    ),
    cli(
        "ckpt-bool-weights",
        "checkpoint",
        GEN,
        ("dtype", KEY),
        setup=with_weights(lambda sd: sd.update({KEY: sd[KEY] > 0})),
    ),
    cli("ckpt-vae-file-as-model", "checkpoint", GEN, ("missing keys", "llm."), setup=with_weights(vae_only)),
    cli("ckpt-tokenizer-missing", "checkpoint", GEN, "tokenizer.json", setup=with_file("tokenizer.json", None)),
    cli(
        "ckpt-tokenizer-corrupt",
        "checkpoint",
        GEN,
        "{ws}/m/tokenizer.json",
        setup=with_file("tokenizer.json", b'{"model": '),
    ),
    cli(
        "ckpt-weights-file-given-as-model",
        "checkpoint",
        ["generate", "a", "-o", "{ws}/x.png", "--model", "{model}/model.safetensors"],
        "is not a saved harmon model",
    ),
    cli("ckpt-model-folder-missing", "checkpoint", [*GEN[:4], "--model", "{ws}/nope"], "{ws}/nope"),
    cli("ckpt-model-folder-empty", "checkpoint", [*GEN[:4], "--model", "{ws}/e"], "{ws}/e", setup=folder("e")),
]

OFFICIAL = [
    cli(
        "ckpt-official-pickle-with-code",
        "checkpoint",
        official("{ws}/evil.pth"),
        ("refusing", "{ws}/evil.pth"),
        setup=official_setup(pickle_with_code()),
    ),
    cli(
        "ckpt-official-missing",
        "checkpoint",
        official("{ws}/nope.pth"),
        "{ws}/nope.pth",
        setup=official_setup(lambda ctx: None),
    ),
    cli(
        "ckpt-official-is-a-folder",
        "checkpoint",
        official("{ws}/dir.pth"),
        "{ws}/dir.pth",
        setup=official_setup(folder("dir.pth")),
    ),
    cli(
        "ckpt-official-holds-a-list",
        "checkpoint",
        official("{ws}/c.pth"),
        ("{ws}/c.pth", "state dict"),
        setup=official_setup(torch_file("c.pth", lambda ctx: [torch.zeros(1)])),
    ),
    cli(
        "ckpt-official-non-tensor-entries",
        "checkpoint",
        official("{ws}/c.pth"),
        ("{ws}/c.pth", "step"),
        setup=official_setup(torch_file("c.pth", lambda ctx: {"w": torch.zeros(1), "step": "ten"})),
    ),
    cli(
        "ckpt-official-truncated-pickle",
        "checkpoint",
        official("{ws}/c.pth"),
        ("{ws}/c.pth", "truncated"),
        setup=official_setup(_truncated_pickle),
    ),
    cli(
        "ckpt-official-vae-given-as-checkpoint",
        "checkpoint",
        official("{ws}/vae.safetensors"),
        ("not a Harmon checkpoint", "mar."),
        setup=official_setup(_vae_safetensors),
    ),
    cli(
        "ckpt-official-our-format-as-checkpoint",
        "checkpoint",
        official("{model}/model.safetensors"),
        "MAR width",
        setup=official_setup(lambda ctx: None),
    ),
    cli(
        "ckpt-official-llm-folder-without-config",
        "checkpoint",
        official("{ws}/c.pth"),
        "no config.json in the LLM folder",
        setup=official_setup(lambda ctx: (ctx.ws / "qwen" / "config.json").unlink()),
    ),
    cli(
        "ckpt-official-llm-config-invalid-json",
        "checkpoint",
        official("{ws}/c.pth"),
        "{ws}/qwen/config.json",
        setup=official_setup(lambda ctx: (ctx.ws / "qwen" / "config.json").write_text("{qwen")),
    ),
]

API = [
    api(
        "ckpt-api-read-truncated-safetensors",
        "checkpoint",
        lambda ctx: read_weights(ctx.ws / "m" / "model.safetensors"),
        ValueError,
        WEIGHTS,
        setup=truncated_weights(),
    ),
    api(
        "ckpt-api-read-pickle-with-code",
        "checkpoint",
        lambda ctx: read_weights(ctx.ws / "evil.pth"),
        ValueError,
        ("refusing", "{ws}/evil.pth"),
        setup=pickle_with_code(),
    ),
    api(
        "ckpt-api-vae-pickle-with-code",
        "checkpoint",
        lambda ctx: read_vae_weights(ctx.ws / "evil.pth"),
        ValueError,
        ("refusing", "{ws}/evil.pth"),
        setup=pickle_with_code(),
    ),
    api(
        "ckpt-api-missing-entry",
        "checkpoint",
        lambda ctx: read_weights(ctx.ws / "kl16.ckpt", entry="model"),
        ValueError,
        "'model'",
        setup=torch_file("kl16.ckpt", lambda ctx: {"state": {}}),
    ),
    api(
        "ckpt-api-safetensors-named-bin",
        "checkpoint",
        lambda ctx: read_weights(ctx.ws / "w.bin"),
        ValueError,
        "{ws}/w.bin",
        setup=lambda ctx: save_file({"w": torch.zeros(1)}, str(ctx.path("w.bin"))),
    ),
    api(
        "ckpt-api-from-pretrained-garbage",
        "checkpoint",
        lambda ctx: HarmonPipeline.from_pretrained(ctx.ws / "m", device="cpu"),
        ValueError,
        WEIGHTS,
        setup=with_file("model.safetensors", b"\x00" * 64),
    ),
    api(
        "ckpt-api-from-pretrained-dtype-unknown-name",
        "checkpoint",
        lambda ctx: HarmonPipeline.from_pretrained(ctx.model, device="cpu", dtype="fp13"),
        (TypeError, ValueError),
        "dtype",
    ),
    api(
        "ckpt-api-vae-weights-in-a-text-file",
        "checkpoint",
        lambda ctx: read_vae_weights(ctx.ws / "kl16.ckpt"),
        ValueError,
        ("{ws}/kl16.ckpt", "LFS"),
        setup=file_bytes("kl16.ckpt", b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n"),
    ),
]

CASES: list[Case] = [*OUR_FORMAT, *OFFICIAL, *API]
