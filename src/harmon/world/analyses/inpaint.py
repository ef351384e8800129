"""Can the generator finish a scene it is handed? (``python -m harmon.world.analyses.inpaint``)

For fresh prompts of a level, the scene each prompt describes is rendered and read by the model's VAE into tokens.
Some tokens are given; the model draws the others one at a time in a random order (exact masked-autoregressive
sampling: every drawn token is visible to the next), guided as the model's generation defaults say, and the image is
judged by GenEval's rule against the prompt, exactly as a generated image is:

    nothing given        ordinary generation, one token per step
    background given     every token that touches no object's box is given: the model draws the objects
    objects given        the tokens touching an object are given: the model draws the background around them
    everything given     the VAE's reading of the scene: the ceiling of any sampler

and, per token with all the others given ("lone token"), the share of that token's pixels whose colour is off the
VAE's reading by more than 48 in some channel. A generator that has learned the world draws the objects when the
background is given (it is told where they are and what the prompt asks), and redraws a lone token almost exactly
(its object continues from its neighbours). If it cannot, no sampler setting helps: the fault is in what the
decoder's condition carries, or in what the diffusion head makes of it.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from harmon.mar import mask_by_order
from harmon.prompts import generation_prompt, unconditional_prompt
from harmon.tokenizer import USER_TEXT
from harmon.world.analyses.continuation import r_squared
from harmon.world.analyses.runner import load_for_analysis, report
from harmon.world.detect2 import detect_objects_v2
from harmon.world.detection import detect_objects
from harmon.world.free import LEVELS, level_scene_for_prompt, level_world
from harmon.world.language import sample_prompt_v2
from harmon.world.render import render
from harmon.world.scene import Scene
from harmon.world.scoring import TAGS, judge_prompt

CONDITIONS = ("nothing", "background", "objects", "everything")
OFF_BY = 48  # a pixel is "off" when some channel differs from the VAE's reading by more than this


def object_tokens(scene: Scene, grid: tuple[int, int]) -> torch.Tensor:
    """(L,) True at the tokens whose pixels overlap some object's box (row-major over the ``grid``)."""
    h, w = grid
    th, tw = scene.image_size // h, scene.image_size // w
    out = torch.zeros(h, w, dtype=torch.bool)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.bbox
        out[y0 // th : (y1 - 1) // th + 1, x0 // tw : (x1 - 1) // tw + 1] = True
    return out.flatten()


def prompt_rows(pipe, prompts: list[str], guided: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The generation prompts' padded ids and mask, with one unconditional row per prompt after them when
    ``guided``."""
    seqs = [pipe.encode_prompt(generation_prompt(USER_TEXT), p) for p in prompts]
    seqs += [pipe.encode_prompt(unconditional_prompt())] * (len(prompts) if guided else 0)
    return pipe.pad_prompts(seqs)


@torch.no_grad()
def token_conditions(pipe, tokens: torch.Tensor, unknown: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
    """The decoder's output (R, L, Dd) for one image's ``tokens`` (1, L, C) with ``unknown`` (1, L) masked, under
    each of the R prompt rows."""
    model, rows = pipe.model, ids.shape[0]
    grid = model.grid_for(pipe.config.generation.image_size)
    x_enc = model.forward_mae_encoder(tokens.expand(rows, -1, -1), unknown.expand(rows, -1), grid, mask, input_ids=ids)
    return model.mar.forward_decoder(x_enc, unknown.expand(rows, -1), grid)


@torch.no_grad()
def draw_unknown(pipe, tokens, unknown, ids, mask, generator: torch.Generator) -> torch.Tensor:
    """``tokens`` (1, L, C) with every ``unknown`` (1, L) position drawn one at a time in a random order, each under
    the model's guidance and diffusion settings; the given tokens are returned unchanged."""
    gen = pipe.config.generation
    tokens, unknown = tokens.clone(), unknown.clone()
    order = [i for i in torch.randperm(tokens.shape[1], generator=generator).tolist() if unknown[0, i]]
    for i in order:
        z = token_conditions(pipe, tokens, unknown, ids, mask)[:, i]  # (R, Dd)
        new = pipe.model.mar.diffloss.sample(
            z,
            temperature=gen.temperature,
            cfg=gen.guidance_scale if ids.shape[0] > 1 else 1.0,
            generator=generator,
            num_steps=str(gen.num_sampling_steps),
            x0_clip=gen.x0_clip,
        )  # (1, C)
        tokens[0, i] = new[0].to(tokens.dtype)
        unknown[0, i] = False
    return tokens


def to_pixels(pipe, tokens: torch.Tensor) -> np.ndarray:
    """(H, W, 3) uint8 image of one image's tokens (1, L, C)."""
    grid = pipe.model.grid_for(pipe.config.generation.image_size)
    pix = pipe.model.decode_tokens(tokens, grid)[0].float().clamp(-1, 1)  # (3, H, W)
    return ((pix.permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def read_scene(pipe, scene: Scene, config) -> torch.Tensor:
    """The VAE's tokens (1, L, C) of the rendered scene."""
    arr = torch.from_numpy(np.asarray(render(scene, config), dtype=np.float32))
    pixels = (arr.permute(2, 0, 1)[None] / 127.5 - 1).to(pipe.device, pipe.model.vae_dtype)
    return pipe.model.encode_images(pixels)


@torch.no_grad()
def lone_token_error(pipe, tokens, ids, mask, generator: torch.Generator) -> list[float]:
    """For each token in turn, masked alone and redrawn: the share of its pixels off the reading (:data:`OFF_BY`)."""
    grid = pipe.model.grid_for(pipe.config.generation.image_size)
    reading = to_pixels(pipe, tokens).astype(int)
    th, tw = reading.shape[0] // grid[0], reading.shape[1] // grid[1]
    out = []
    for i in range(tokens.shape[1]):
        unknown = torch.zeros(1, tokens.shape[1], dtype=torch.bool, device=tokens.device)
        unknown[0, i] = True
        redrawn = to_pixels(pipe, draw_unknown(pipe, tokens, unknown, ids, mask, generator)).astype(int)
        y, x = divmod(i, grid[1])
        box = (slice(y * th, (y + 1) * th), slice(x * tw, (x + 1) * tw))
        out.append(float((np.abs(redrawn[box] - reading[box]).max(-1) > OFF_BY).mean()))
    return out


def _unknown_for(condition: str, objects: torch.Tensor) -> torch.Tensor:
    return {
        "nothing": torch.ones_like(objects),
        "background": objects,
        "objects": ~objects,
        "everything": torch.zeros_like(objects),
    }[condition][None]


@torch.no_grad()
def inpaint_study(pipe, level: str = "free", per_tag: int = 8, lone_scenes: int = 8, seed: int = 0) -> dict:
    """GenEval-rule accuracy per tag and condition (:data:`CONDITIONS`) on ``per_tag`` fresh seen-phrasing prompts
    per tag, and the lone-token error over the first ``lone_scenes`` scenes (see the module docstring)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    config = level_world(level, pipe.config.generation.image_size)
    detect = detect_objects_v2 if level == "free" else detect_objects
    grid = pipe.model.grid_for(pipe.config.generation.image_size)
    g = torch.Generator().manual_seed(seed)
    hits = {(tag, c): [] for tag in TAGS for c in CONDITIONS}
    lone, object_share = [], []
    guided = pipe.config.generation.guidance_scale != 1.0
    for k in range(per_tag * len(TAGS)):
        tag = TAGS[k % len(TAGS)]
        meta = sample_prompt_v2(g, tag, config, "seen")
        scene = level_scene_for_prompt(meta, g, config)
        tokens, objects = read_scene(pipe, scene, config), object_tokens(scene, grid).to(pipe.device)
        object_share.append(float(objects.float().mean()))
        ids, mask = prompt_rows(pipe, [meta["prompt"]], guided)
        for c in CONDITIONS:
            drawn = draw_unknown(pipe, tokens, _unknown_for(c, objects), ids, mask, torch.Generator().manual_seed(k))
            hits[(tag, c)].append(judge_prompt(meta, detect(to_pixels(pipe, drawn), config)))
        if k < lone_scenes:
            lone += lone_token_error(pipe, tokens, ids, mask, torch.Generator().manual_seed(10_000 + k))
    accuracy = {c: {tag: float(np.mean(hits[(tag, c)])) for tag in TAGS} for c in CONDITIONS}
    for c in CONDITIONS:
        accuracy[c]["overall"] = float(np.mean([accuracy[c][t] for t in TAGS]))
    return {
        "level": level,
        "per_tag": per_tag,
        "seed": seed,
        "accuracy": accuracy,
        "object_token_share": float(np.mean(object_share)),
        "lone_token_off": float(np.mean(lone)) if lone else None,
        "lone_tokens_over_10pct": float(np.mean(np.array(lone) > 0.1)) if lone else None,
    }


@torch.no_grad()
def condition_fit(pipe, level: str = "free", scenes: int = 64, seed: int = 0) -> dict:
    """How well the generator knows a token from everything else, on ``scenes`` fresh prompts' scenes:

    * ``loss_by_masked``: the text-to-image loss with exactly n of the L tokens masked (random positions, 4
      draws each), for n from 1 to L; a generator that continues objects approaches 0 at n = 1;
    * ``ridge_r2`` / ``sample_r2``: each token masked alone, the share of its latent's variance (held-out quarter
      of the tokens) explained by a ridge map from the decoder's condition, and by the head's own sample (no
      guidance).
    """
    config = level_world(level, pipe.config.generation.image_size)
    model, g = pipe.model, torch.Generator().manual_seed(seed)
    grid = model.grid_for(pipe.config.generation.image_size)
    length = grid[0] * grid[1]
    metas = [sample_prompt_v2(g, None, config, "seen") for _ in range(scenes)]
    tokens = torch.cat([read_scene(pipe, level_scene_for_prompt(m, g, config), config) for m in metas])  # (N, L, C)
    ids, mask = prompt_rows(pipe, [m["prompt"] for m in metas], guided=False)

    def decoded(unknown: torch.Tensor) -> torch.Tensor:
        x_enc = model.forward_mae_encoder(tokens, unknown, grid, mask, input_ids=ids)
        return model.mar.forward_decoder(x_enc, unknown, grid)  # (N, L, Dd)

    losses = {}
    for n in sorted({1, 2, length // 4, length // 2, 3 * length // 4, length}):
        draws = []
        for rep in range(4):
            gen = torch.Generator().manual_seed(seed * 1000 + rep)
            unknown = mask_by_order(n, model.sample_orders(scenes, length, gen))
            draws.append(float(model.mar.forward_loss(decoded(unknown), tokens, unknown, generator=gen)))
        losses[n] = float(np.mean(draws))
    z, sampled = [], []
    for i in range(length):
        unknown = torch.zeros(scenes, length, dtype=torch.bool, device=tokens.device)
        unknown[:, i] = True
        zi = decoded(unknown)[:, i]  # (N, Dd)
        z.append(zi)
        sampled.append(model.mar.diffloss.sample(zi, temperature=1.0, cfg=1.0, generator=g, num_steps="50"))
    return {"loss_by_masked": losses, **_explained(torch.cat(z), torch.cat(sampled), tokens.transpose(0, 1))}


def _explained(z: torch.Tensor, sampled: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """R2 on a held-out quarter of the rows: ridge from ``z`` (M, D) to ``target`` (M, C), and ``sampled`` as is."""
    target = target.reshape(z.shape[0], -1).double()
    x = torch.cat([z.double(), torch.ones(z.shape[0], 1, dtype=torch.float64, device=z.device)], 1)
    order = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(0))
    fit, test = order[: 3 * len(order) // 4], order[3 * len(order) // 4 :]
    weights = torch.linalg.solve(
        x[fit].T @ x[fit] + 1e-2 * torch.eye(x.shape[1], dtype=x.dtype), x[fit].T @ target[fit]
    )
    mean = target[fit].mean(0)
    return {
        "ridge_r2": r_squared(x[test] @ weights, target[test], mean),
        "sample_r2": r_squared(sampled[test].double(), target[test], mean),
    }


def format_inpaint(result: dict) -> str:
    """Markdown table of :func:`inpaint_study`'s result."""
    head = "| given | " + " | ".join(TAGS) + " | overall |"
    lines = [head, "|" + "---|" * (len(TAGS) + 2)]
    for c in CONDITIONS:
        acc = result["accuracy"][c]
        lines.append(f"| {c} | " + " | ".join(f"{acc[t]:.2f}" for t in (*TAGS, "overall")) + " |")
    lines.append("")
    lines.append(f"Tokens touching an object: {result['object_token_share']:.2f} of the grid.")
    if result["lone_token_off"] is not None:
        lines.append(
            f"Lone token redrawn with every other token given: {result['lone_token_off']:.3f} of its pixels off by "
            f"more than {OFF_BY}; {result['lone_tokens_over_10pct']:.2f} of tokens have more than 10 % off."
        )
    if "fit" in result:
        fit = result["fit"]
        curve = ", ".join(f"{n} masked {v:.3f}" for n, v in fit["loss_by_masked"].items())
        lines.append(f"Text-to-image loss: {curve}.")
        lines.append(
            f"Lone token's latent explained (R2, held out): ridge from its condition {fit['ridge_r2']:.2f}, "
            f"the head's sample {fit['sample_r2']:.2f}."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a harmon model folder")
    p.add_argument("--level", choices=LEVELS, default="free")
    p.add_argument("--per-tag", type=int, default=8, help="prompts per GenEval tag")
    p.add_argument("--lone-scenes", type=int, default=8, help="scenes whose every token is redrawn alone")
    p.add_argument("--fit-scenes", type=int, default=0, help="also condition_fit on this many scenes (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args(argv)
    pipe = load_for_analysis(args.model, args.threads)
    result = inpaint_study(pipe, args.level, args.per_tag, args.lone_scenes, args.seed)
    if args.fit_scenes:
        result["fit"] = condition_fit(pipe, args.level, args.fit_scenes, args.seed)
    report(format_inpaint(result), result, args.json)


if __name__ == "__main__":
    main()
