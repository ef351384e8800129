"""Reproduce the shipped shapes-world model from nothing: ``python -m harmon.world.pipeline``.

Stages (each skipped when its output exists, so an interrupted run continues where it stopped):
    0a tokenizer  byte-level BPE on the world's text (ChatML specials, <image>)
    0b vae        the KL VAE class, stride 16 / 16 channels, trained on rendered scenes
    0c lm         the small Qwen2 LLM pre-trained on the world's text (recipe shapes_lm)
    I             LLM frozen: text-to-image + captioning (shapes_stage1)
    II            everything: text-to-image + QA + captioning (shapes_stage2)
    III           generation side only (MAR decoder, diffusion head, proj_out): text-to-image (shapes_stage3)
    decoder       the VAE decoder of stage III's model learns to draw clean scenes from noisy latents (encoder frozen)
    phrasing      v1 only: every module but the VAE, on the grid world in the grammar's varied wordings and the
                  templates (shapes_phrasing), so reworded prompts and questions work
    place         v1 only: placed drawings, the cells' position tables enlarged (shapes_place): objects drawn at
                  named quadrants
    plan_varied   v1 only: the phrasing mix + placed drawings + layout plans of prompts in the templates and the
                  grammar's seen wordings (shapes_plan_varied; harmon.world.recipes_plan): the LLM writes a
                  prompt's layout for generate(plan=True)
    edit_layout   v1 only: the plan_varied mix + layouts read from images and the changes edit instructions make
                  to layouts (shapes_edit_layout): the model edits through its layout (pipe.edit's layout route)
    edit          IV, with --edit only: the decoder stage's model learns to edit images, keeping generation and
                  understanding (shapes_edit); the shipped model has no stage IV: the recipe does not yet reach the
                  edit bars
    ship          copy the last stage's export into the package (bf16 weights) with tuned sampling defaults
Wall time and machine of every stage are recorded in ``<root>/pipeline.json``.

``--world v2`` trains the same stages on world v2 (:mod:`harmon.world.recipes_v2`: free and grid levels, varied
phrasings, a stride-8 VAE read at MAR patch size 2), by default under ``runs/shapes_v2``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from harmon.world import data, data2, recipes, recipes_plan, recipes_v2, stage0
from harmon.world.layout_edits import EDIT_LAYOUT_REQUEST, LAYOUT_REQUEST
from harmon.world.planning import PLAN_PREFIX
from harmon.world.questions import PLACES

logger = logging.getLogger(__name__)
# the generation settings of a model taught to plan: its request, and the quadrants in the order its drawer reads
PLANS = {"plan_request": PLAN_PREFIX, "plan_places": list(PLACES)}
# and of a model taught to edit through its layout (harmon.layout_edit): the two requests of that route and the
# draws each edit reads back
LAYOUT_ROUTE = {"layout_request": LAYOUT_REQUEST, "edit_layout_request": EDIT_LAYOUT_REQUEST, "edit_checks": 4}


@dataclass(frozen=True)
class WorldRecipes:
    """What the pipeline trains for one world: its recipes (named per stage), stage-0 and decoder settings and the
    text its tokenizer learns from."""

    root: str  # the folder the recipes' paths start with; the pipeline moves them under --root
    recipes: dict[str, Callable]  # recipe name -> TrainConfig factory
    stages: tuple[str, str, str, str]  # recipe names of lm, stage1, stage2, stage3
    vae: dict  # keyword arguments of stage0.train_shapes_vae (read at call time)
    decoder: dict  # keyword arguments of stage0.finetune_vae_decoder (read at call time)
    corpus: Callable[..., Iterator[str]]  # corpus(n, seed=...) -> texts for the tokenizer
    edit: str | None = None  # recipe name of the editing stage that --edit adds at the end
    later: tuple[tuple[str, str], ...] = ()  # (stage, recipe name) of the stages after the decoder stage, in order
    # sampling defaults --ship records in the model's config (--default KEY=VALUE overrides each)
    ship_defaults: dict = dataclasses.field(default_factory=dict)
    # the stages whose models write layout plans, with the plan settings --ship records for each (plan_request,
    # plan_places); shipped from another stage, a model records none
    planning: dict[str, dict] = dataclasses.field(default_factory=dict)


WORLDS = {
    "v1": WorldRecipes(
        recipes.ROOT,
        {**recipes.RECIPES, **recipes_plan.PLAN_RECIPES},
        ("shapes_lm", "shapes_stage1", "shapes_stage2", "shapes_stage3"),
        recipes.SHAPES_VAE,
        recipes.SHAPES_DECODER,
        data.corpus,
        "shapes_edit",
        (
            ("phrasing", "shapes_phrasing"),
            ("place", "shapes_place"),
            ("plan_varied", "shapes_plan_varied"),
            ("edit_layout", "shapes_edit_layout"),
            ("edit_text", "shapes_edit_text"),
        ),
        # one token per step on its 2 x 2 grid, as the shipped model records them
        {"num_iter": 8, "num_sampling_steps": "100", "guidance_scale": 3.0},
        {
            "plan_varied": PLANS,
            "edit_layout": {**PLANS, **LAYOUT_ROUTE},
            "edit_text": {**PLANS, **LAYOUT_ROUTE},
        },
    ),
    "v2": WorldRecipes(
        recipes_v2.ROOT,
        recipes_v2.RECIPES_V2,
        ("shapes_v2_lm", "shapes_v2_stage1", "shapes_v2_stage2", "shapes_v2_stage3"),
        recipes_v2.SHAPES_V2_VAE,
        recipes_v2.SHAPES_V2_DECODER,
        data2.corpus_v2,
        "shapes_v2_edit",
    ),
}


LATER_STAGES = tuple(dict.fromkeys(stage for w in WORLDS.values() for stage, _ in w.later))
TRAINED_STAGES = ("stage1", "stage2", "stage3", "decoder", *LATER_STAGES, "edit")  # stages whose model --ship copies


def _record(root: Path, stage: str, seconds: float, device: str) -> None:
    path = root / "pipeline.json"
    data = json.loads(path.read_text()) if path.is_file() else {"stages": {}}
    data["stages"][stage] = {
        "seconds": round(seconds, 1),
        "device": device,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    data["total_seconds"] = round(sum(s["seconds"] for s in data["stages"].values()), 1)
    path.write_text(json.dumps(data, indent=2) + "\n")


def train_tokenizer_stage(root: Path, seed: int = 0, world: WorldRecipes = WORLDS["v1"], texts: int = 3000) -> Path:
    from harmon.tokenizer import train_tokenizer

    out = root / "tokenizer"
    tok = train_tokenizer(world.corpus(texts, seed=seed), vocab_size=512)
    tok.save_pretrained(str(out))
    return out


def run_recipe(name: str, root: Path, device: str, overrides: list[str], world: WorldRecipes = WORLDS["v1"]) -> None:
    from harmon.train.config import apply_overrides
    from harmon.train.trainer import Trainer

    cfg = world.recipes[name]()
    cfg.output_dir = str(root / Path(cfg.output_dir).relative_to(world.root))
    if cfg.model.pretrained:
        cfg.model.pretrained = str(root / Path(cfg.model.pretrained).relative_to(world.root))
    for field in ("tokenizer", "vae_weights"):
        value = getattr(cfg.model, field)
        if value:
            setattr(cfg.model, field, str(root / Path(value).relative_to(world.root)))
    cfg = apply_overrides(cfg, overrides)
    Trainer(cfg, device=device).run(resume="auto")


def ship(root: Path, target: Path, defaults: dict | None = None, stage: str = "stage3") -> None:
    """Copy ``stage``'s final export into the package with bf16 weights and the tuned sampling ``defaults``."""
    from dataclasses import replace

    from harmon.pipeline import HarmonPipeline

    pipe = HarmonPipeline.from_pretrained(root / stage / "final", device="cpu", dtype=torch.float32)
    if defaults:
        config = pipe.model.config.replace(generation=replace(pipe.model.config.generation, **defaults))
        pipe.model.config = pipe.config = config
    if target.exists():
        shutil.rmtree(target)
    pipe.save_pretrained(target, dtype=torch.bfloat16)
    shutil.copy(root / "pipeline.json", target / "pipeline.json")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--root", default=None, help="working folder of all stages (default: runs/shapes, v2: runs/shapes_v2)"
    )
    p.add_argument("--world", choices=sorted(WORLDS), default="v1", help="v1: the shipped model's world; v2: world v2")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--ship", action="store_true", help="copy the result into src/harmon/assets/shapes-tiny")
    p.add_argument("--edit", action="store_true", help="also run stage IV (editing) after the decoder stage")
    p.add_argument(
        "--default",
        dest="defaults",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="sampling default recorded in the shipped config, e.g. x0_clip=3.0 num_sampling_steps=100 (v1 records "
        "num_iter=8 num_sampling_steps=100 guidance_scale=3.0 and its plan request unless told otherwise)",
    )
    p.add_argument(
        "--until",
        default=None,
        choices=["tokenizer", "vae", "lm", *TRAINED_STAGES],
        help="stop after this stage (a later call with the same --root continues); with --ship, ship "
        "this stage's model (stage1-3, decoder and later)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="STAGE:KEY=VALUE",
        help="override a field of one stage's recipe, e.g. stage2:max_steps=100",
    )
    return p


def stages(
    root: Path, device: str, overrides: list[str], world: WorldRecipes = WORLDS["v1"], edit: bool = False
) -> list[tuple[str, Path, Callable[[], object]]]:
    """(name, marker written when the stage is done, run) of every stage, in order; ``overrides`` are
    ``STAGE:KEY=VALUE`` items, each given to its own stage (``tokenizer:texts=N`` sets the tokenizer's corpus);
    ``edit``: end with the world's editing stage."""

    def mine(stage: str) -> list[str]:
        return [o.split(":", 1)[1] for o in overrides if o.startswith(stage + ":")]

    def trained(stage: str, recipe: str) -> tuple[str, Path, Callable[[], object]]:
        marker = root / stage / "final" / "model.safetensors"
        return stage, marker, lambda: run_recipe(recipe, root, device, mine(stage), world)

    def tokenizer() -> Path:
        return train_tokenizer_stage(
            root, world=world, **_settings("tokenizer", _tokenizer_options, {}, mine("tokenizer"))
        )

    lm, s1, s2, s3 = world.stages
    later = [trained(stage, recipe) for stage, recipe in world.later]
    last = [trained("edit", world.edit)] if edit and world.edit else []
    return [
        ("tokenizer", root / "tokenizer" / "tokenizer.json", tokenizer),
        ("vae", root / "stage0_vae" / "vae.safetensors", lambda: _vae(root, device, mine("vae"), world)),
        trained("lm", lm),
        trained("stage1", s1),
        trained("stage2", s2),
        trained("stage3", s3),
        (
            "decoder",
            root / "decoder" / "decoder_log.json",
            lambda: _decoder(root, device, mine("decoder"), world=world),
        ),
        *later,
        *last,
    ]


def run_stages(
    root: Path,
    device: str,
    overrides: list[str],
    until: str | None = None,
    world: WorldRecipes = WORLDS["v1"],
    edit: bool = False,
) -> None:
    """Run every stage whose marker is missing, recording its wall time; stop after ``until``."""
    for name, done_marker, fn in stages(root, device, overrides, world, edit):
        if done_marker.exists():
            logger.info("stage %s: done already (%s)", name, done_marker)
            if name == until:
                break
            continue
        logger.info("stage %s: starting", name)
        t = time.perf_counter()
        fn()
        _record(root, name, time.perf_counter() - t, device)
        if name == until:
            logger.info("stopping after stage %s (--until)", name)
            break


def shipped_stage(world: WorldRecipes, until: str | None, edit: bool) -> str:
    """The stage whose model ``--ship`` copies: ``until`` where it names a trained stage, else the last stage run."""
    if until in TRAINED_STAGES:
        return until
    return "edit" if edit and world.edit else world.later[-1][0] if world.later else "decoder"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    world = WORLDS[args.world]
    root = Path(args.root or world.root)
    edit = args.edit or args.until == "edit"
    names = [name for name, _, _ in stages(root, args.device, [], world, edit)]
    if args.until is not None and args.until not in names:
        parser.error(f"--until {args.until}: world {args.world} has no such stage; its stages: {', '.join(names)}")
    root.mkdir(parents=True, exist_ok=True)
    run_stages(root, args.device, args.overrides, args.until, world, edit)
    if args.ship:
        from harmon.shipped import SHIPPED_DIR
        from harmon.train.config import parse_value

        given = {k: parse_value(v) for k, v in (d.split("=", 1) for d in args.defaults)}
        stage = shipped_stage(world, args.until, edit)
        defaults = {**world.ship_defaults, **world.planning.get(stage, {}), **given}
        if "num_sampling_steps" in defaults:
            defaults["num_sampling_steps"] = str(defaults["num_sampling_steps"])
        ship(root, SHIPPED_DIR, defaults, stage=stage)
        logger.info("shipped to %s", SHIPPED_DIR)
    return 0


def _settings(stage: str, fn, recipe: dict, overrides: list[str]) -> dict:
    """``recipe`` updated by ``KEY=VALUE`` overrides, each typed like ``fn``'s keyword default."""
    import inspect

    params = inspect.signature(fn).parameters
    kwargs = dict(recipe)
    for item in overrides:
        key, value = item.split("=", 1)
        if key not in params:
            raise ValueError(f"{stage}: unknown setting {key!r}; known: {', '.join(params)}")
        kwargs[key] = type(params[key].default)(value)
    return kwargs


def _tokenizer_options(seed: int = 0, texts: int = 3000) -> None:
    """The settings ``--set tokenizer:KEY=VALUE`` may change (keyword arguments of train_tokenizer_stage)."""


def _vae(root: Path, device: str, overrides: list[str], world: WorldRecipes = WORLDS["v1"]) -> None:
    train = stage0.train_shapes_vae  # looked up at call time: tests stand in a fake
    train(root / "stage0_vae", device=device, **_settings("vae", train, world.vae, overrides))


def _decoder(
    root: Path, device: str, overrides: list[str], source: str = "stage3", world: WorldRecipes = WORLDS["v1"]
) -> None:
    """Fine-tune the VAE decoder of ``source``'s export (the world's decoder recipe) and export the whole model."""
    from harmon.pipeline import HarmonPipeline

    finetune = stage0.finetune_vae_decoder  # looked up at call time: tests stand in a fake
    kwargs = _settings("decoder", finetune, world.decoder, overrides)
    pipe = HarmonPipeline.from_pretrained(root / source / "final", device=device, dtype=torch.float32)
    summary = finetune(pipe.model.vae, device=device, **kwargs)
    out = root / "decoder"
    pipe.save_pretrained(out / "final")
    (out / "decoder_log.json").write_text(json.dumps({"source": source, **summary}, indent=2) + "\n")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
