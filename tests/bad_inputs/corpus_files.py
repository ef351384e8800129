"""Builders of the files a case's user has: images of every awkward kind, broken weights, configs and text files.

Each builder takes the case context (or a path) and writes into the case's own folder; none touches the shared
model copy.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from corpus_case import Ctx
from PIL import Image
from safetensors.torch import load_file, save_file

# ---------------------------------------------------------------------------------------------- images


def png(ctx: Ctx, name: str = "img.png", size: tuple[int, int] = (64, 64), mode: str = "RGB", color: Any = "red"):
    """A plain image file (the format follows the extension)."""
    Image.new(mode, size, color).save(ctx.path(name))


def truncated_png(ctx: Ctx, name: str = "cut.png") -> None:
    """The first half of a real PNG: a download that stopped."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    ctx.path(name).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(ctx: Ctx, name: str = "bomb.png", side: int = 100_000) -> None:
    """A PNG whose header claims side x side pixels (10^10: over Pillow's limit) in a few bytes."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")
    ctx.path(name).write_bytes(data)


def cmyk_jpeg(ctx: Ctx, name: str = "cmyk.jpg") -> None:
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(ctx.path(name), "JPEG")


def png16(ctx: Ctx, name: str = "deep.png") -> None:
    """A 16-bit greyscale PNG (mode I;16), as scanners and microscopes write."""
    Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)).save(ctx.path(name))


def animated_gif(ctx: Ctx, name: str = "anim.gif") -> None:
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "blue", "green")]
    frames[0].save(ctx.path(name), save_all=True, append_images=frames[1:], duration=50, loop=0)


def transparent(mode: str) -> Image.Image:
    """A fully transparent image whose hidden colour is black: a composite onto white shows white."""
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    if mode == "P":
        pal = rgba.convert("RGB").convert("P")
        pal.info["transparency"] = 0
        return pal
    return rgba.convert(mode)


def file_bytes(name: str, data: bytes) -> Callable[[Ctx], None]:
    """A setup writing ``data`` to ``name``."""

    def setup(ctx: Ctx) -> None:
        ctx.path(name).write_bytes(data)

    return setup


def text(name: str, content: str) -> Callable[[Ctx], None]:
    return file_bytes(name, content.encode())


def folder(name: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        ctx.path(name).mkdir()

    return setup


def both(*setups: Callable[[Ctx], Any]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        for s in setups:
            s(ctx)

    return setup


# ---------------------------------------------------------------------------------------------- models


def model_copy(ctx: Ctx, name: str = "m") -> Path:
    """The user's own copy of the shipped model, which the case may then break."""
    dest = ctx.ws / name
    shutil.copytree(ctx.model, dest)
    return dest


def with_config(edit: Callable[[dict], Any], name: str = "m") -> Callable[[Ctx], None]:
    """A setup: a model copy whose config.json is ``edit(config)`` (or the dict edited in place when it returns
    None), written as JSON."""

    def setup(ctx: Ctx) -> None:
        path = model_copy(ctx, name) / "config.json"
        config = json.loads(path.read_text())
        changed = edit(config)
        path.write_text(json.dumps(config if changed is None else changed))

    return setup


def with_config_bytes(data: bytes, name: str = "m") -> Callable[[Ctx], None]:
    """A setup: a model copy whose config.json holds ``data`` verbatim."""

    def setup(ctx: Ctx) -> None:
        (model_copy(ctx, name) / "config.json").write_bytes(data)

    return setup


def with_file(file: str, data: bytes | None, name: str = "m") -> Callable[[Ctx], None]:
    """A setup: a model copy whose ``file`` holds ``data`` (None: the file removed)."""

    def setup(ctx: Ctx) -> None:
        path = model_copy(ctx, name) / file
        if data is None:
            path.unlink()
        else:
            path.write_bytes(data)

    return setup


def shipped_weights(ctx: Ctx) -> dict[str, torch.Tensor]:
    return load_file(str(ctx.model / "model.safetensors"))


def with_weights(edit: Callable[[dict[str, torch.Tensor]], Any], name: str = "m") -> Callable[[Ctx], None]:
    """A setup: a model copy whose model.safetensors holds ``edit(weights)`` when that is a dict, else the weights
    ``edit`` changed in place."""

    def setup(ctx: Ctx) -> None:
        sd = shipped_weights(ctx)
        changed = edit(sd)
        save_file(changed if isinstance(changed, dict) else sd, str(model_copy(ctx, name) / "model.safetensors"))

    return setup


def truncated_weights(name: str = "m") -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        path = model_copy(ctx, name) / "model.safetensors"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])

    return setup


class RunsCode:
    """Pickles as a call of ``os.getcwd``: harmless, but a loader that unpickles it runs code."""

    def __reduce__(self):
        return (os.getcwd, ())


def pickle_with_code(name: str = "evil.pth") -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        torch.save({"w": torch.zeros(1), "payload": RunsCode()}, ctx.path(name))

    return setup


def torch_file(name: str, obj: Callable[[Ctx], Any]) -> Callable[[Ctx], None]:
    """A setup: ``torch.save(obj(ctx))`` to ``name``."""

    def setup(ctx: Ctx) -> None:
        torch.save(obj(ctx), ctx.path(name))

    return setup


def llm_folder(name: str = "qwen") -> Callable[[Ctx], None]:
    """A Qwen-style LLM folder (config.json + tokenizer) made of the shipped model's LLM section."""

    def setup(ctx: Ctx) -> None:
        dest = ctx.path(name)
        dest.mkdir()
        config = json.loads((ctx.model / "config.json").read_text())["llm"]
        (dest / "config.json").write_text(json.dumps({**config, "model_type": "qwen2"}))
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(ctx.model / f, dest / f)

    return setup


# ---------------------------------------------------------------------------------------------- training


def train_config(edit: Callable[[dict], Any] | None = None, name: str = "train.json") -> Callable[[Ctx], None]:
    """A setup: the toy run's config.json (tiny preset, shapes data, output in the case's folder) as ``name``,
    after ``edit``."""

    def setup(ctx: Ctx) -> None:
        config = json.loads((ctx.run / "config.json").read_text())
        config["output_dir"] = str(ctx.ws / "run")
        changed = edit(config) if edit else None
        ctx.path(name).write_text(json.dumps(config if changed is None else changed))

    return setup


def run_copy(ctx: Ctx) -> Path:
    """The user's finished toy run, copied into the case's folder (its config.json pointing there)."""
    dest = ctx.ws / "run"
    shutil.copytree(ctx.run, dest)
    config = json.loads((dest / "config.json").read_text())
    config["output_dir"] = str(dest)
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return dest
