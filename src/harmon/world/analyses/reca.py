"""``harmon analyze reca``: does reconstruction alignment (RecA, arXiv 2509.07295) help a small Harmon?

RecA post-trains a unified model to redraw an unlabelled image from its own understanding features of that image
plus a short template. On Harmon-1.5B it lifts GenEval from 0.73 to 0.86 (position 0.45 -> 0.76) with
understanding kept. This study repeats the experiment on the shapes world, with labels never used:

    base       the model as given (no training); scored once per sampling seed
    reca       RecA at the understanding size the model was trained with (``full_size``)
    reca_low   RecA with the condition at half that size: the paper found low-resolution features
               (224/256 px against 512 px) work better, as they invite less pixel copying
    reca_t2i   RecA at full size with the world's text-to-image pairs added to every step (our assumption, not
               the paper's recipe: RecA's data never exercises the text path, which may drift while the shared
               weights move)
    t2i        the control for reca_t2i: the same text-to-image pairs and questions, no reconstruction, so that
               a gain of reca_t2i can be told apart from more text-to-image training

Each RecA run starts from the base model with its own seed (data order, masks, noise) and the same recipe:
reconstruction of world scenes (rendered images only) mixed 1 : 1 with the world's question answering, as the
paper mixes RecA with understanding data, at a learning rate of ``lr``. Every model draws the same fresh prompts
(``prompt_seed``), with sampling seed = run seed, and answers the same fresh questions (greedy), so arms differ by
their weights and sampling noise only. The verdict (:func:`verdict`) asks for the gain the issue names: GenEval-rule
overall +0.05 or more, beyond two standard errors of the difference of the means, with POPE F1 and counting within
one point of the base. Results are written after every run, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from harmon.atomic import write_text_atomic
from harmon.data.tasks import Task
from harmon.pipeline import HarmonPipeline
from harmon.train.config import ModelInit, OptimConfig, SourceConfig, TrainConfig
from harmon.train.trainer import Trainer
from harmon.world.analyses.synergy import mean_std
from harmon.world.evaluate import understanding_scores
from harmon.world.prompts import sample_eval_prompts
from harmon.world.recipes import t2i_source
from harmon.world.scene import WorldConfig
from harmon.world.scoring import score_generation

logger = logging.getLogger(__name__)

ARMS = ("base", "reca", "reca_low", "reca_t2i", "t2i")
# the trained arms' RecA condition size, as a share of the understanding size (None: no reconstruction), and whether
# text-to-image pairs join the step
ARM_RECIPES = {"reca": (1.0, False), "reca_low": (0.5, False), "reca_t2i": (1.0, True), "t2i": (None, True)}
# Gains the issue asks for before RecA counts as replicated, and the understanding it must keep (points of 1.0).
MIN_GAIN, KEEP_UNDERSTANDING = 0.05, 0.01


def reca_config(
    base: str | Path,
    out_dir: str | Path,
    seed: int,
    steps: int,
    cond_image_size: int | None,
    lr: float,
    batch: int,
    t2i: bool = False,
) -> TrainConfig:
    """One RecA run: reconstruction of shapes-world images (templates dropped for 10 % of samples, image kept, as
    RecA's public code does) + the same number of question-answering samples per step; everything trains but the
    VAE (the released RecA trains the LLM and the MAR; the VAE is frozen in every Harmon stage).

    ``t2i``: the world's text-to-image pairs (the recipes' tag weights) join every step, ``batch`` of them;
    ``cond_image_size`` None: no reconstruction (the control arm)."""
    data = [SourceConfig("image2text_qa", "shapes", task=Task.IMAGE_TO_TEXT, batch_size=batch, max_text_length=256)]
    if t2i:
        data.append(t2i_source(batch))
    if cond_image_size is None:
        return _reca_train_config(base, out_dir, f"shapes_t2i_s{seed}", data, seed, steps, lr)
    recon = SourceConfig(
        "reconstruction",
        "shapes",
        task=Task.RECONSTRUCTION,
        batch_size=batch,
        cfg_drop_prob=0.0,
        text_drop_prob=0.1,
        cond_image_size=cond_image_size,
    )
    name = f"shapes_reca{'_t2i' if t2i else ''}_c{cond_image_size}_s{seed}"
    return _reca_train_config(base, out_dir, name, [recon, *data], seed, steps, lr)


def _reca_train_config(
    base: str | Path, out_dir: str | Path, name: str, data: list[SourceConfig], seed: int, steps: int, lr: float
) -> TrainConfig:
    return TrainConfig(
        name=name,
        output_dir=str(out_dir),
        model=ModelInit(preset=None, pretrained=str(base)),
        data=data,
        image_size=64,
        train_modules=("llm.", "mar.", "proj_in.", "proj_out."),
        max_steps=steps,
        seed=seed,
        optim=OptimConfig(lr=lr, warmup_ratio=0.02),
        log_every=max(1, steps // 10),
        save_every=max(1, steps // 2),
    )


def score_model(pipe: HarmonPipeline, n_prompts: int, n_questions: int, prompt_seed: int, seed: int, **settings):
    """GenEval-rule scores of ``n_prompts`` fresh prompts (drawn from ``prompt_seed``, sampled with ``seed``) and
    the understanding scores of ``n_questions`` fresh questions (greedy, drawn from ``prompt_seed``)."""
    world = WorldConfig(image_size=settings.get("image_size") or pipe.config.generation.image_size)
    prompts = sample_eval_prompts(n_prompts, torch.Generator().manual_seed(prompt_seed), world)
    generator = torch.Generator().manual_seed(10_000 + seed)
    images = []
    for i in range(0, len(prompts), 16):
        images += pipe.generate([p["prompt"] for p in prompts[i : i + 16]], generator=generator, **settings)
    gen = score_generation(prompts, images, world)
    und, _, _ = understanding_scores(pipe, n_questions, prompt_seed) if n_questions else ({}, None, None)
    row = {"overall": gen["overall"], **{k: gen["accuracy"].get(k, float("nan")) for k in ("position", "color_attr")}}
    row["held_out"] = float("nan") if gen["held_out"] is None else gen["held_out"]
    if und:
        row.update(pope_f1=und["pope"]["all"]["f1"], counting=und["accuracy"].get("counting", float("nan")))
    return row


def run_reca_study(
    base: str | Path,
    out_dir: str | Path,
    seeds: tuple[int, ...] = (0, 1, 2),
    steps: int = 300,
    lr: float = 1e-4,
    batch: int = 16,
    n_prompts: int = 240,
    n_questions: int = 280,
    prompt_seed: int = 0,
    full_size: int | None = None,
    arms: tuple[str, ...] = ARMS,
    device: str = "cpu",
    command: str | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Run (or resume) every (arm, seed) and return the study, also written to ``out_dir/reca.json``."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm {unknown[0]!r}; known: {', '.join(ARMS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "reca.json"
    study: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    base_pipe = HarmonPipeline.from_pretrained(base, device=device)
    full = full_size or base_pipe.config.generation.understanding_image_size
    sizes = {arm: None if share is None else int(full * share) for arm, (share, _) in ARM_RECIPES.items()}
    study.update(base=str(base), steps=steps, lr=lr, batch=batch, n_prompts=n_prompts, n_questions=n_questions)
    study.update(prompt_seed=prompt_seed, cond_sizes=sizes, settings=settings)
    if command is not None:
        study["command"] = command
    runs = study.setdefault("runs", {})
    for seed in seeds:
        for arm in arms:
            key = f"{arm}/seed{seed}"
            if key in runs:
                continue
            t = time.perf_counter()
            if arm == "base":
                pipe = base_pipe
            else:
                t2i = ARM_RECIPES[arm][1]
                cfg = reca_config(base, out / arm / f"seed{seed}", seed, steps, sizes[arm], lr, batch, t2i=t2i)
                Trainer(cfg, device=device).run(resume="auto")
                pipe = HarmonPipeline.from_pretrained(Path(cfg.output_dir) / "final", device=device)
            runs[key] = score_model(pipe, n_prompts, n_questions, prompt_seed, seed, **settings)
            runs[key]["seconds"] = round(time.perf_counter() - t, 1)
            write_text_atomic(path, json.dumps(study, indent=2) + "\n")
    study["summary"] = summarize(study)
    study["verdict"] = verdict(study["summary"])
    write_text_atomic(path, json.dumps(study, indent=2) + "\n")
    return study


def summarize(study: dict[str, Any]) -> dict[str, Any]:
    """Per arm: the number of runs and (mean, std) of every recorded figure."""
    summary: dict[str, Any] = {}
    for arm in ARMS:
        rows = [r for k, r in study.get("runs", {}).items() if k.split("/")[0] == arm]
        if rows:
            keys = [k for k in rows[0] if k != "seconds"]
            summary[arm] = {"n": len(rows), **{k: mean_std([r[k] for r in rows]) for k in keys}}
    return summary


def _gain(a: dict, b: dict, key: str) -> tuple[float, float, bool]:
    """Difference of means b - a of ``key``, its standard error, and whether both sides have the 3 runs or more a
    verdict needs (one run has no spread, so a single seed would look certain)."""
    se = math.sqrt(a[key][1] ** 2 / a["n"] + b[key][1] ** 2 / b["n"])
    return b[key][0] - a[key][0], se, a["n"] >= 3 and b["n"] >= 3


def verdict(summary: dict[str, Any]) -> dict[str, Any]:
    """Whether each RecA arm replicates the paper's finding against the base (see the module docstring)."""
    out: dict[str, Any] = {}
    base = summary.get("base")
    for arm in ARM_RECIPES:
        if base is None or arm not in summary:
            continue
        gain, se, enough = _gain(base, summary[arm], "overall")
        if arm == "t2i":  # the control: its gain over the base, no RecA verdict
            out[arm] = {"gain": gain, "se": se}
            continue
        kept = {
            k: abs(summary[arm][k][0] - base[k][0]) <= KEEP_UNDERSTANDING for k in ("pope_f1", "counting") if k in base
        }
        replicates = enough and gain >= MIN_GAIN and gain > 2 * se and all(kept.values())
        out[arm] = {
            "gain": gain,
            "se": se,
            "understanding_kept": kept,
            "enough_seeds": enough,
            "replicates": replicates,
        }
    # arm against arm: a difference counts only beyond two standard errors, with enough runs on each side
    for key, (a, b) in {"low_minus_full": ("reca", "reca_low"), "reca_beyond_t2i": ("t2i", "reca_t2i")}.items():
        if a in summary and b in summary:
            gain, se, enough = _gain(summary[a], summary[b], "overall")
            out[key] = {"gain": gain, "se": se, "enough_seeds": enough}
            out[key].update(better=enough and gain > 2 * se, worse=enough and gain < -2 * se)
    return out


def format_reca_table(study: dict[str, Any]) -> str:
    """A markdown table of the summary, then one line of verdict per arm, both derived from the study's runs (a
    study saved by an earlier version keeps its own summary and verdict, in an older form)."""
    summary = summarize(study)
    if not summary:
        return "(no finished runs)"
    keys = [k for k in next(iter(summary.values())) if k != "n"]
    lines = ["| arm | runs | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for arm, s in summary.items():
        cells = [f"{s[k][0]:.3f} ± {s[k][1]:.3f}" for k in keys]
        lines.append(f"| {arm} | {s['n']} | " + " | ".join(cells) + " |")
    for arm, v in verdict(summary).items():
        if arm in ("low_minus_full", "reca_beyond_t2i"):
            lines.append("\n" + _pair_line(arm, v))
            continue
        if arm == "t2i":
            lines.append(f"\nt2i (no reconstruction): overall {v['gain']:+.3f} ± {v['se']:.3f} over the base.")
            continue
        says = "replicates" if v["replicates"] else "does not replicate"
        if not v["enough_seeds"]:
            says = "cannot be judged with fewer than 3 runs per arm"
        lines.append(
            f"\n{arm}: overall {v['gain']:+.3f} ± {v['se']:.3f} (2 SE = {2 * v['se']:.3f}) over the base; "
            f"understanding kept: {v['understanding_kept']}; RecA's finding {says} here."
        )
    return "\n".join(lines)


def _pair_line(key: str, v: dict[str, Any]) -> str:
    """One sentence for an arm-against-arm comparison of :func:`verdict`."""
    figure = f"{v['gain']:+.3f} ± {v['se']:.3f}"
    if not v["enough_seeds"]:
        return f"{key}: {figure}; cannot be judged with fewer than 3 runs per arm."
    if key == "low_minus_full":
        return f"Low-resolution features {'beat' if v['better'] else 'do not beat'} full-resolution ones: {figure}."
    says = "adds to" if v["better"] else "costs against" if v["worse"] else "makes no difference to"
    return f"Reconstruction beside text-to-image pairs {says} the pairs alone, beyond two standard errors: {figure}."


@torch.no_grad()
def condition_gap(pipe: HarmonPipeline, n: int = 32, seed: int = 99, repeats: int = 8) -> dict[str, float]:
    """How much a model's generator uses an image in its prompt: the reconstruction loss (RecA's template prompt
    with the image's understanding features, at the model's understanding size) of ``n`` fresh grid scenes with
    their own image as the condition, and with another scene's. Each loss is averaged over ``repeats`` draws of the
    masks and noise, the same draws for both."""
    from harmon.data.conditioned import ImageConditionedProcessor, collate_conditioned
    from harmon.world.data import shapes_record

    size = pipe.config.generation.understanding_image_size
    proc = ImageConditionedProcessor(
        pipe.tokenizer,
        Task.RECONSTRUCTION,
        image_size=pipe.config.generation.image_size,
        cond_image_size=size,
        image_tokens=pipe.config.image_positions(size),
        cfg_drop_prob=0.0,
        text_drop_prob=0.0,
        pad_to_square=True,
    )
    world = WorldConfig(image_size=pipe.config.generation.image_size)
    records = [shapes_record("text2image", i, seed=seed, config=world) for i in range(n)]
    batch = collate_conditioned(
        [proc(r, torch.Generator().manual_seed(i)) for i, r in enumerate(records)], pipe.tokenizer.pad_token_id
    )
    model = pipe.model.eval()

    def loss(cond: torch.Tensor) -> float:
        total = 0.0
        for r in range(repeats):
            g = torch.Generator().manual_seed(r)
            total += float(
                model.image_conditioned_loss(batch["pixels"], cond, batch["input_ids"], batch["attention_mask"], g)
            )
        return total / repeats

    other = torch.roll(torch.arange(n), 1)  # every scene conditioned on its neighbour's image
    return {"own_image": loss(batch["cond_pixels"]), "other_image": loss(batch["cond_pixels"][other])}


@torch.no_grad()
def redraw_scores(pipe: HarmonPipeline, n: int = 40, seed: int = 7, guidance_scale: float = 3.0) -> dict[str, float]:
    """How well a model redraws ``n`` fresh grid scenes from RecA's prompt (a template after the scene's
    understanding features), sampled with the model's settings at ``guidance_scale`` against the plain
    unconditional prompt: the share whose detected objects match the scene's as a bag of (colour, shape) ("content")
    and with each object in its own quadrant too ("layout")."""
    from harmon.conditioning import conditioned_batch
    from harmon.prompts import RECONSTRUCTION_TEMPLATES, image_prompt, unconditional_prompt
    from harmon.world.detection import detect_objects
    from harmon.world.render import render
    from harmon.world.sampling import sample_scene

    settings, size = pipe.generation_settings(guidance_scale=guidance_scale)
    world, g = WorldConfig(image_size=size), torch.Generator().manual_seed(seed)
    half, hits = size / 2, {"content": 0, "layout": 0}
    for i in range(n):
        scene = sample_scene(g, world)
        template = image_prompt(RECONSTRUCTION_TEMPLATES[i % len(RECONSTRUCTION_TEMPLATES)], 1, pipe.config.image_token)
        seqs = [pipe.encode_prompt(template)] + [pipe.encode_prompt(unconditional_prompt())] * (settings.groups - 1)
        batch = conditioned_batch(pipe, seqs, [render(scene, world)], None, pipe.image_tokens(size))
        drawn = pipe.draw(*batch, size, settings, generator=torch.Generator().manual_seed(i))
        found = detect_objects(drawn[0], world)
        for key, place in (("content", False), ("layout", True)):
            hits[key] += _objects(scene.objects, half, place) == _objects(found, half, place)
    return {k: v / n for k, v in hits.items()}


def _objects(objects, half: float, place: bool) -> list[tuple]:
    """(colour, shape) of every object, with its quadrant when ``place``, sorted: a scene as a comparable list."""
    return sorted((o.color, o.shape, *((o.center[0] > half, o.center[1] > half) if place else ())) for o in objects)


def main(argv: list[str] | None = None) -> int:
    """``python -m harmon.world.analyses.reca MODEL...``: :func:`condition_gap` and :func:`redraw_scores` of each
    model folder."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("models", nargs="+")
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--redraws", type=int, default=40, help="scenes redrawn per model (0: skip)")
    args = p.parse_args(argv)
    for path in args.models:
        pipe = HarmonPipeline.from_pretrained(path, dtype=torch.float32)
        gap = condition_gap(pipe, args.scenes)
        logger.info("%s: reconstruction loss, own image %.4f, another image %.4f", path, *gap.values())
        if args.redraws:
            scores = redraw_scores(pipe, args.redraws)
            logger.info("%s: redrawn scenes, content %.3f, layout %.3f", path, scores["content"], scores["layout"])
    return 0


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
