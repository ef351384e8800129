"""Shared pieces of the data-layer tests (test_data.py, test_mixture.py): images, shards, records, sources."""

from __future__ import annotations

import io
import itertools
import json
import tarfile

import numpy as np
import torch
from PIL import Image

from harmon.data import (
    Image2TextProcessor,
    ProceduralSource,
    SourceSpec,
    Task,
    Text2ImageProcessor,
    caption_conversation,
)


def gradient_image(size: tuple[int, int] = (24, 16), seed: int = 0) -> Image.Image:
    """A non-uniform RGB image (so crops and resizes are visible), (w, h) = size."""
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = (np.arange(w) * 255 // max(w - 1, 1))[None, :]
    arr[..., 1] = (np.arange(h) * 255 // max(h - 1, 1))[:, None]
    arr[..., 2] = (seed * 37) % 256
    return Image.fromarray(arr, mode="RGB")


def save_image(path, size=(24, 16), seed: int = 0, fmt: str | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    gradient_image(size, seed).save(path, format=fmt)
    return path


def image_bytes(size=(24, 16), seed: int = 0, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    gradient_image(size, seed).save(buf, format=fmt)
    return buf.getvalue()


def write_shard(path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_two_shards(tmp_path) -> str:
    """Two shards of 6 samples each: jpg + txt, and png + json."""
    write_shard(
        tmp_path / "shard-000.tar",
        [(f"{i:06d}", {"jpg": image_bytes(seed=i, fmt="JPEG"), "txt": f"caption {i}".encode()}) for i in range(6)],
    )
    write_shard(
        tmp_path / "shard-001.tar",
        [
            (f"{i:06d}", {"png": image_bytes(seed=i), "json": json.dumps({"caption": f"caption {i}"}).encode()})
            for i in range(6, 12)
        ],
    )
    return str(tmp_path / "shard-{000..001}.tar")


def t2i_record(i: int) -> dict:
    if i == 3:  # one bad index: too small
        return {"image": gradient_image((4, 4)), "caption": "tiny"}
    return {"image": gradient_image((20 + 4 * (i % 3), 16), seed=i), "caption": f"a red circle number {i}"}


def i2t_record(i: int) -> dict:
    return {
        "image": gradient_image((16, 20), seed=i),
        "conversation": caption_conversation(f"there are {i} circles", "How many circles are there?"),
    }


def map_sources(tok) -> list[SourceSpec]:
    return [
        SourceSpec(
            "text2image", Task.TEXT_TO_IMAGE, ProceduralSource(t2i_record, 7), Text2ImageProcessor(tok, 8), batch_size=3
        ),
        SourceSpec(
            "image2text",
            Task.IMAGE_TO_TEXT,
            ProceduralSource(i2t_record, 5, kind="image2text"),
            Image2TextProcessor(tok, 16, image_tokens=5, max_text_length=64),
            batch_size=1,
        ),
    ]


def take(loader, n: int) -> list[dict]:
    return list(itertools.islice(iter(loader), n))


def assert_same_batch(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, sub in a.items():
        assert sub.keys() == b[name].keys()
        for k, x in sub.items():
            y = b[name][k]
            if k == "task":
                assert x is y, name
            else:
                assert (x is None and y is None) or torch.equal(x, y), (name, k)
