"""Images for an FID benchmark: MJHQ-30K's ``meta_data.json`` or any JSON-lines prompt file, resumable, torchrun-ready.

Input: MJHQ-30K's ``meta_data.json`` (``{"<id>": {"prompt": ..., "category": ...}, ...}``, read in file order), or
JSON lines with ``"prompt"`` and optionally ``"id"`` (default: the 0-based line number as ``00000``) and
``"category"``. Ids and categories are plain names (letters, digits, ``_ . -``), unique ids.

Output (``--outdir DIR``)::

    DIR/generation_config.json      model, prompt template, sampling settings, seeding (a resume must match them)
    DIR/images/<category>/<id>.png  MJHQ-30K's own layout (mjhq30k_imgs/<category>/<id>.jpg); no category: images/
    DIR/images/<category>/<id>_<k>.png  with -n N > 1, sample k < N

Batches: prompts are cut into chunks of ``--batch-size`` consecutive prompts (chunk c holds prompts
c*B .. c*B+B-1); a chunk is one ``generate`` call with one generator,
``torch.Generator().manual_seed(derive_seed(seed, "fid", c*B, B))``, so its images do not depend on the world
size or on resumption (they do depend on B, which a resume must keep). Under torchrun process RANK generates the
chunks with ``c % WORLD_SIZE == RANK``; no process group is started. A chunk whose files all exist is skipped; one
with a file missing is generated again whole and only the missing files are written (atomically: a killed run
leaves no truncated PNG under a final name).
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import torch

from harmon.atomic import is_temp
from harmon.data.records import derive_seed
from harmon.eval.common import FormatError, read_jsonl, save_image_atomic, where
from harmon.eval.geneval import RESUME_KEYS, check_config, generation_config, resolve_settings
from harmon.pipeline import HarmonPipeline
from harmon.validate import read_json

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # ids and categories become file and folder names
FID_RESUME_KEYS = (*RESUME_KEYS, "batch_size", "prompts_sha256")


def _record(raw: Any, fallback_id: str, at: str) -> dict[str, str]:
    """One prompt record {"id", "prompt", "category"}, checked; ``at`` names the place for messages."""
    if not isinstance(raw, dict):
        raise FormatError(f"{at}: expected an object with 'prompt', got {type(raw).__name__}")
    prompt, rid, category = raw.get("prompt"), str(raw.get("id", fallback_id)), raw.get("category", "")
    if not isinstance(prompt, str) or not prompt.strip():
        raise FormatError(f"{at}: 'prompt' must be a non-empty string, got {prompt!r}")
    for name, value in (("id", rid), ("category", category)):
        if not isinstance(value, str) or (value and not NAME_RE.fullmatch(value)) or (name == "id" and not value):
            raise FormatError(f"{at}: {name} {value!r} is not a plain name (letters, digits, '_', '.', '-')")
    return {"id": rid, "prompt": prompt, "category": category}


def read_fid_prompts(path: str | Path, limit: int | None = None) -> list[dict[str, str]]:
    """Prompt records of an MJHQ-30K ``meta_data.json`` or a JSON-lines file (the first ``limit``)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = read_json(path, "prompt file")
        if not isinstance(data, dict):
            raise FormatError(f"{path}: expected MJHQ-30K's layout, an object of id -> {{prompt, category}}")
        records = [_record({**v, "id": k} if isinstance(v, dict) else v, k, f"{path}: {k!r}") for k, v in data.items()]
    else:
        rows = read_jsonl(path)
        records = [_record(r, f"{i:05d}", where(path, r["_line"])) for i, r in enumerate(rows)]
    seen: set[str] = set()
    for r in records:
        if r["id"] in seen:
            raise FormatError(f"{path}: id {r['id']!r} appears twice; ids name the image files")
        seen.add(r["id"])
    records = records[:limit] if limit is not None else records
    if not records:
        raise FormatError(f"{path}: no prompts")
    return records


def prompts_fingerprint(path: str | Path) -> str:
    """sha256 of the prompt file, recorded in generation_config.json so that a resume with another file is refused."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def image_path(outdir: str | Path, record: dict[str, str], k: int = 0, n_samples: int = 1) -> Path:
    """Where sample ``k`` of a prompt goes: ``images/<category>/<id>.png`` (``<id>_<k>.png`` when n_samples > 1)."""
    folder = Path(outdir) / "images" / record["category"] if record["category"] else Path(outdir) / "images"
    return folder / (f"{record['id']}.png" if n_samples == 1 else f"{record['id']}_{k}.png")


def _remove_temp_files(outdir: Path, records: list[dict[str, str]], n_samples: int) -> None:
    """Delete the temp files a killed write left for these prompts (their chunk is generated again)."""
    for r in records:
        final = image_path(outdir, r, 0, n_samples)
        for stray in final.parent.glob(f".{r['id']}*.tmp"):
            if is_temp(stray):
                stray.unlink(missing_ok=True)


def generate_for_fid(
    pipe: HarmonPipeline,
    prompts: list[dict[str, str]],
    outdir: str | Path,
    n_samples: int = 1,
    batch_size: int = 1,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    extra_config: dict[str, Any] | None = None,
    compile: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Generate this rank's chunks of ``prompts`` into ``outdir`` (layout and seeding in the module docstring).

    Args:
        prompts: records of :func:`read_fid_prompts`.
        n_samples: images per prompt (MJHQ-30K: 1).
        batch_size: prompts per ``generate`` call (and per generator).
        rank, world_size: this process takes the chunks with ``c % world_size == rank``.
        extra_config: more entries for ``generation_config.json``: "model", "prompts_file", "prompts_sha256".
        compile, settings: as :func:`harmon.eval.geneval.generate_geneval`.
    Returns:
        {"generated": [prompt ids], "skipped": [prompt ids already complete], "settings": resolved settings}.
    """
    if n_samples < 1 or batch_size < 1:
        raise ValueError(f"n_samples and batch_size must be >= 1, got {n_samples}, {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got {rank}, {world_size}")
    outdir = Path(outdir)
    resolved = resolve_settings(pipe, **settings)
    config = generation_config(resolved, n_samples, seed, batch_size=batch_size, **(extra_config or {}))
    config.update(format="fid", seeding='torch.Generator().manual_seed(derive_seed(seed, "fid", c*B, B)) per chunk')
    outdir.mkdir(parents=True, exist_ok=True)
    check_config(outdir, config, FID_RESUME_KEYS)
    chunks = [prompts[s : s + batch_size] for s in range(0, len(prompts), batch_size)]
    generated, skipped = [], []
    for c in range(rank, len(chunks), world_size):
        chunk = chunks[c]
        paths = [[image_path(outdir, r, k, n_samples) for k in range(n_samples)] for r in chunk]
        if all(p.is_file() for ps in paths for p in ps):
            skipped += [r["id"] for r in chunk]
            continue
        _remove_temp_files(outdir, chunk, n_samples)
        generator = torch.Generator().manual_seed(derive_seed(seed, "fid", c * batch_size, batch_size))
        texts = [r["prompt"] for r in chunk]
        images = pipe.generate(
            texts, num_images_per_prompt=n_samples, generator=generator, compile=compile, **resolved
        )  # prompt-major: all samples of prompt 0, then prompt 1...
        for path, image in zip([p for ps in paths for p in ps], images):
            if not path.is_file():
                save_image_atomic(image, path)
        generated += [r["id"] for r in chunk]
        if rank == 0:
            logger.info("fid: chunk %d of %d (%d prompts written so far on this rank)", c, len(chunks), len(generated))
    return {"generated": generated, "skipped": skipped, "settings": resolved}
