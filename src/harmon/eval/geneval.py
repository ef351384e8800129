"""``harmon eval geneval``: images for GenEval prompts, written in the layout GenEval's evaluator reads.

Input: GenEval's ``evaluation_metadata.jsonl``, one JSON object per line with at least ``"prompt"`` (GenEval's
objects also carry ``tag``, ``include`` and, for counting, ``exclude``; ``--score shapes`` needs ``tag``). Prompt
``i`` is line ``i`` (0-based, blank lines skipped). The shapes world ships its own file,
``harmon/assets/eval/shapes_geneval_metadata.jsonl`` (:func:`harmon.world.assets.write_shapes_metadata`).

Output (``--outdir DIR``)::

    DIR/generation_config.json          model, prompt template and sampling settings (a resume must match them)
    DIR/00000/metadata.jsonl            the prompt's JSON object on one line (json.load-able), exactly as read
    DIR/00000/samples/00000.png         sample k of prompt 0, k < N (-n, default 4)
    DIR/00000/grid.png                  the N samples side by side (skipped with --no-grid)
    DIR/00001/...
    DIR/results.json, DIR/results.jsonl written by --score shapes (:func:`harmon.world.evaluate.score_shapes`)

GenEval's evaluator takes every all-digit folder, ``json.load``s its ``metadata.jsonl`` and scores every file of
``samples/`` whose name matches ``\\d+\\.png`` (``re.match``, anchored at the start only); so temp files are
hidden names (``.00003.png.<pid>.tmp``) that it never picks up.

Distributed: under torchrun each process reads RANK / WORLD_SIZE and generates the prompts with
``index % WORLD_SIZE == RANK``; no process group is started. Resumable: a prompt whose N sample files all exist
is skipped; images are written to a temp file and renamed, so an interrupted run never leaves a truncated PNG
under a final name (stray temp files of an owned prompt are removed when it is redone). Seeds: prompt ``i`` draws
from ``torch.Generator().manual_seed(derive_seed(seed, "geneval", i))``, so its images do not depend on the
world size, on resumption or on ``--limit``. A prompt with some samples missing is generated again whole (its
N images share one generator) and only the missing files are written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from harmon.atomic import is_temp
from harmon.data.records import derive_seed
from harmon.eval.common import (
    FormatError,
    field,
    read_jsonl,
    save_image_atomic,
    where,
    write_text_atomic,
)
from harmon.images import image_grid, load_image
from harmon.pipeline import HarmonPipeline
from harmon.prompts import CHAT_TEMPLATE, GENERATE_PREFIX, UNCONDITIONAL_PROMPT

logger = logging.getLogger(__name__)

CONFIG_FILE = "generation_config.json"
SETTINGS = ("image_size", "num_iter", "guidance_scale", "cfg_schedule", "temperature", "num_sampling_steps")
# keys of generation_config.json that must agree for a resume to continue a run: another model or other settings
# in the same folder would silently mix two runs' images
RESUME_KEYS = (
    "model",
    "n_samples",
    "seed",
    "seeding",
    "settings",
    "prompt_template",
    "prompt_prefix",
    "unconditional_prompt",
)
SAMPLE_RE = re.compile(r"\d+\.png")  # GenEval's evaluator: re.match(r"\d+\.png", name)


# ---- prompts ------------------------------------------------------------------------------------------------


def read_prompts(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """GenEval metadata objects of ``path`` (the first ``limit``), each with a non-empty string ``prompt``."""
    records = read_jsonl(path)
    prompts = []
    for r in records[:limit] if limit is not None else records:
        text = field(r, "prompt", path)
        if not isinstance(text, str):
            raise FormatError(f"{where(path, r['_line'])}: 'prompt' must be a string, got {type(text).__name__}")
        prompts.append({k: v for k, v in r.items() if k != "_line"})
    if not prompts:
        raise FormatError(f"{path}: no prompts")
    return prompts


# ---- generation ---------------------------------------------------------------------------------------------


def resolve_settings(pipe: HarmonPipeline, **overrides: Any) -> dict[str, Any]:
    """The full sampling settings a run uses: the model's defaults with ``overrides`` (None = default) applied."""
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise TypeError(f"unknown generation settings {unknown}; known: {list(SETTINGS)}")
    d = pipe.config.generation
    out = {name: getattr(d, name) for name in SETTINGS}
    out.update({k: v for k, v in overrides.items() if v is not None})
    out["num_sampling_steps"] = str(out["num_sampling_steps"])
    return out


def generation_config(settings: dict[str, Any], n_samples: int, seed: int, **extra: Any) -> dict[str, Any]:
    """What ``generation_config.json`` records: the prompt template, the sampling settings and the seeding."""
    return {
        "format": "geneval",
        "prompt_template": CHAT_TEMPLATE,
        "prompt_prefix": GENERATE_PREFIX,  # the user turn is prefix + prompt
        "unconditional_prompt": UNCONDITIONAL_PROMPT,  # the guidance input
        "n_samples": n_samples,
        "seed": seed,
        "seeding": 'torch.Generator().manual_seed(derive_seed(seed, "geneval", index)), one per prompt',
        "settings": settings,
        **extra,
    }


def prompt_folder(outdir: str | Path, index: int) -> Path:
    return Path(outdir) / f"{index:05d}"


def sample_path(outdir: str | Path, index: int, k: int) -> Path:
    return prompt_folder(outdir, index) / "samples" / f"{k:05d}.png"


def is_complete(outdir: str | Path, index: int, n_samples: int) -> bool:
    """True when prompt ``index`` has its metadata and all ``n_samples`` sample files."""
    folder = prompt_folder(outdir, index)
    return (folder / "metadata.jsonl").is_file() and all(
        sample_path(outdir, index, k).is_file() for k in range(n_samples)
    )


def make_grid(images: list[Image.Image]) -> Image.Image:
    """The images on a near-square grid (ceil(sqrt(N)) columns), row by row."""
    return image_grid(images, math.ceil(math.sqrt(len(images))))


def check_config(outdir: Path, config: dict[str, Any], resume_keys: tuple[str, ...] = RESUME_KEYS) -> None:
    """Write generation_config.json, or check that a resumed run uses the recorded settings (``resume_keys``)."""
    path = outdir / CONFIG_FILE
    text = json.dumps(config, indent=2) + "\n"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [k for k in resume_keys if old.get(k) != config.get(k)]
        if diff:
            raise ValueError(
                f"{path} was written with other settings ({', '.join(diff)}: {old.get(diff[0])!r} "
                f"vs now {config.get(diff[0])!r}); use a fresh --outdir or the same settings"
            )
        if path.read_text() == text:
            return  # untouched on resume
    write_text_atomic(path, text)


def _check_metadata(folder: Path, prompt: dict[str, Any]) -> None:
    path = folder / "metadata.jsonl"
    if path.is_file():
        with path.open() as f:
            old = json.load(f)
        if old != prompt:
            raise ValueError(
                f"{path} holds another prompt ({old.get('prompt')!r}, now {prompt.get('prompt')!r}); "
                "the prompts file changed since this folder was written: use a fresh --outdir"
            )


def _remove_temp_files(folder: Path) -> None:
    """Delete the temp files an interrupted write left in a prompt's folder (it is redone whole)."""
    for stray in [*folder.glob(".*.tmp"), *(folder / "samples").glob(".*.tmp")]:
        if is_temp(stray):
            stray.unlink(missing_ok=True)


def generate_geneval(
    pipe: HarmonPipeline,
    prompts: list[dict[str, Any]],
    outdir: str | Path,
    n_samples: int = 4,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    grid: bool = True,
    extra_config: dict[str, Any] | None = None,
    compile: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Generate this rank's share of ``prompts`` into ``outdir`` (layout in the module docstring).

    Args:
        prompts: GenEval metadata dicts; prompt i goes to folder ``{i:05d}``.
        n_samples: images per prompt (GenEval's default is 4).
        rank, world_size: this process generates the prompts with ``i % world_size == rank``.
        extra_config: more entries for ``generation_config.json``: "model" (checked on resume), "prompts_file".
        compile: ``generate(compile=True)``: the same images up to float rounding, faster once compiled (not a
            sampling setting, so not recorded and free to differ on resume).
        settings: sampling overrides (``image_size``, ``num_iter``, ``guidance_scale``, ``cfg_schedule``,
            ``temperature``, ``num_sampling_steps``); None keeps the model's default.
    Returns:
        {"generated": [indices], "skipped": [indices already complete], "settings": resolved settings}.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got {rank}, {world_size}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    resolved = resolve_settings(pipe, **settings)
    check_config(outdir, generation_config(resolved, n_samples, seed, **(extra_config or {})))
    generated, skipped = [], []
    mine = [i for i in range(len(prompts)) if i % world_size == rank]
    for done, i in enumerate(mine):
        folder = prompt_folder(outdir, i)
        _check_metadata(folder, prompts[i])
        if is_complete(outdir, i, n_samples):
            skipped.append(i)
            continue
        _remove_temp_files(folder)
        if not (folder / "metadata.jsonl").is_file():
            write_text_atomic(folder / "metadata.jsonl", json.dumps(prompts[i]) + "\n")
        generator = torch.Generator().manual_seed(derive_seed(seed, "geneval", i))
        images = pipe.generate(
            prompts[i]["prompt"], num_images_per_prompt=n_samples, generator=generator, compile=compile, **resolved
        )
        for k, image in enumerate(images):
            if not sample_path(outdir, i, k).is_file():
                save_image_atomic(image, sample_path(outdir, i, k))
        if grid:
            save_image_atomic(make_grid(images), folder / "grid.png")
        generated.append(i)
        if rank == 0:
            logger.info("geneval: prompt %d (%d/%d on this rank) %r", i, done + 1, len(mine), prompts[i]["prompt"])
    return {"generated": generated, "skipped": skipped, "settings": resolved}


# ---- reading back and scoring -------------------------------------------------------------------------------


def read_outputs(outdir: str | Path) -> list[tuple[Path, dict[str, Any], list[Path]]]:
    """(folder, metadata, sample files) for every prompt folder, found with GenEval's evaluator's rules."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        raise FileNotFoundError(f"no such folder: {outdir}")
    out = []
    for name in sorted(os.listdir(outdir)):
        folder = outdir / name
        if not folder.is_dir() or not name.isdigit():
            continue
        with (folder / "metadata.jsonl").open() as f:
            meta = json.load(f)
        samples = folder / "samples"
        files = (
            sorted(p for p in samples.iterdir() if p.is_file() and SAMPLE_RE.match(p.name)) if samples.is_dir() else []
        )
        out.append((folder, meta, files))
    return out


class LazyImages(Sequence):
    """Images read from ``paths`` when indexed, so scoring thousands of samples holds one at a time."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [load_image(p).convert("RGB") for p in self.paths[i]]
        return load_image(self.paths[i]).convert("RGB")
