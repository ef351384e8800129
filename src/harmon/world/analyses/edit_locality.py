"""Does an edit's instruction act where the edit is? (``python -m harmon.world.analyses.edit_locality``)

For fresh edits of each type, the source is rendered and the model's first masked-autoregressive step runs twice
on it (nothing drawn yet, every token unknown): under the edit prompt ("<image>\\nEdit the image: ...") and under
the image alone ("<image>\\nGenerate an image.", the edit's guidance branch), both on the source's canvas when the
model has one (``config.edit_canvas``). Per token, the distance between the two decoder conditions says how much
the instruction changes what is drawn there. A token is *changed* when the objects whose box centres fall in it
differ between the source and the exact target scene.

    AUC       how often a changed token moves more than an unchanged one (0.5: the instruction acts anywhere);
    top hit   how often the token the instruction moves most is a changed one, beside its chance (the share of
              changed tokens).

An editor that knows which object the instruction names moves its token(s) most. DiffEdit (arXiv 2210.11427) builds
its edit masks from such contrasts.

``--losses`` adds what the head makes of those conditions: at the same first step, the diffusion loss of each token
of the exact target (paired timesteps and noise), on the unchanged tokens (the copy) and on the changed ones, under
the edit's own instruction and under the instruction of another edit of the same type (another scene's). An
editor that reads its instruction draws the changed tokens better with its own than with another's.

``--token-shift`` adds how far each cell's VAE token moves from the source to the exact target, on kept cells and
on changed ones: what a perfect copy of the kept cells still leaves to draw.
"""

from __future__ import annotations

import argparse
import itertools

import torch

from harmon.conditioning import edit_inputs
from harmon.world.analyses.relations import _tokens
from harmon.world.analyses.runner import load_for_analysis, report
from harmon.world.edit_grammar import EDIT_TYPES
from harmon.world.edits import Edit, sample_edit
from harmon.world.free import LEVELS, level_world
from harmon.world.render import render
from harmon.world.scene import Scene


def changed_tokens(edit: Edit, grid: tuple[int, int]) -> torch.Tensor:
    """(L,) bool: the tokens whose objects (by box centre) differ between the edit's source and target."""

    def contents(scene: Scene) -> list[set]:
        cells = [set() for _ in range(grid[0] * grid[1])]
        for o in scene.objects:
            cx, cy = (o.bbox[0] + o.bbox[2]) / 2, (o.bbox[1] + o.bbox[3]) / 2
            r = min(int(cy * grid[0] / scene.image_size), grid[0] - 1)
            c = min(int(cx * grid[1] / scene.image_size), grid[1] - 1)
            cells[r * grid[1] + c].add((o.color, o.shape, tuple(o.bbox)))
        return cells

    return torch.tensor([a != b for a, b in zip(contents(edit.source), contents(edit.target))])


def condition_shift(pipe, edit: Edit, image) -> torch.Tensor:
    """(L,) distance between the first step's decoder conditions under the edit prompt and under the image alone."""
    z = first_step_conditions(pipe, image, edit.instruction, groups=2)  # as edit reads the image
    return (z[0] - z[1]).norm(dim=-1)


@torch.no_grad()
def first_step_conditions(pipe, image, instruction: str, groups: int = 1) -> torch.Tensor:
    """(groups, L, Dd) the decoder's conditions at the first step (nothing drawn), on the canvas if any: the edit
    row, then the image-only row of its guidance."""
    model, size = pipe.model, image.size[0]
    grid = model.grid_for(size)
    n = grid[0] * grid[1]
    prompt, attention, canvas = edit_inputs(pipe, image, instruction, groups, size)
    unknown = torch.ones(groups, n, dtype=torch.bool)
    blank = torch.zeros(groups, n, model.config.mar.token_dim, dtype=model.dtype)
    x_enc = model.forward_mae_encoder(blank, unknown, grid, attention, input_ids=prompt)
    return model.decode(x_enc, unknown, grid, *(canvas or ()))


@torch.no_grad()
def token_losses(pipe, z: torch.Tensor, target: torch.Tensor, draws: int = 64, seed: int = 0) -> torch.Tensor:
    """(L,) mean diffusion loss of each target token (L, C) under its condition z (L, Dd), over ``draws`` timesteps
    and noises drawn from ``seed`` (the same for every call, so two conditions compare pairwise)."""
    head = pipe.model.mar.diffloss
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, head.train_diffusion.num_timesteps, (draws,), generator=g)
    noise = torch.randn(draws, target.shape[-1], generator=g)
    n = target.shape[0]
    ts, eps = t.repeat(n), noise.repeat(n, 1)  # (L·draws,), token-major
    x0, c = target.repeat_interleave(draws, 0), z.repeat_interleave(draws, 0)
    terms = head.train_diffusion.training_losses(lambda x_t, tt: head.net(x_t, tt, c), x0, ts, eps)
    return terms["loss"].view(n, draws).mean(dim=1)


def loss_study(pipe, level: str, per_type: int, seed: int) -> dict:
    """Per edit type: the first step's target-token losses on unchanged tokens, and on changed tokens under the
    edit's own instruction and under another same-type edit's (``per_type`` fresh seen-phrasing edits each)."""
    size = pipe.config.generation.image_size
    world, grid = level_world(level, size), pipe.model.grid_for(size)
    g = torch.Generator().manual_seed(seed)
    out = {"level": level, "per_type": per_type, "seed": seed, "types": {}}
    for edit_type in EDIT_TYPES:
        edits = [sample_edit(g, world, edit_type) for _ in range(per_type + 1)]
        kept, own, other = [], [], []
        for edit, foreign in itertools.pairwise(edits):
            image, changed = render(edit.source, world), changed_tokens(edit, grid)
            target = _tokens(pipe, [edit.target], world)[0]  # (L, C)
            mine = token_losses(pipe, first_step_conditions(pipe, image, edit.instruction)[0], target)
            theirs = token_losses(pipe, first_step_conditions(pipe, image, foreign.instruction)[0], target)
            kept.append(mine[~changed])
            own.append(mine[changed])
            other.append(theirs[changed])
        out["types"][edit_type] = {
            name: float(torch.cat(v).mean()) for name, v in (("kept", kept), ("own", own), ("other", other))
        }
    return out


def format_losses(result: dict) -> str:
    lines = [
        f"First-step target-token loss, level {result['level']} ({result['per_type']} edits per type)",
        "| edit type | unchanged tokens | changed, own instruction | changed, another edit's instruction |",
        "|---|---|---|---|",
    ]
    for t, r in result["types"].items():
        lines.append(f"| {t} | {r['kept']:.4f} | {r['own']:.4f} | {r['other']:.4f} |")
    return "\n".join(lines)


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float | None:
    """P(a positive scores above a negative), ties counted half; None without both kinds."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return None
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


def locality_study(pipe, level: str, per_type: int, seed: int) -> dict:
    """AUC, top hit and its chance per edit type (``per_type`` fresh seen-phrasing edits each)."""
    size = pipe.config.generation.image_size
    world, grid = level_world(level, size), pipe.model.grid_for(size)
    g = torch.Generator().manual_seed(seed)
    result = {"level": level, "per_type": per_type, "seed": seed, "canvas": pipe.config.edit_canvas, "types": {}}
    for edit_type in EDIT_TYPES:
        shifts, changed = [], []
        for _ in range(per_type):
            edit = sample_edit(g, world, edit_type)
            image = render(edit.source, world)
            shifts.append(condition_shift(pipe, edit, image))
            changed.append(changed_tokens(edit, grid))
        d, y = torch.stack(shifts), torch.stack(changed)  # (N, L)
        top = y.gather(1, d.argmax(dim=1, keepdim=True)).float().mean()
        result["types"][edit_type] = {
            "auc": auc(d.flatten(), y.flatten()),
            "top_hit": float(top),
            "top_hit_chance": float(y.float().mean()),
        }
    return result


@torch.no_grad()
def token_shift_study(pipe, level: str, per_type: int, seed: int) -> dict:
    """How far the VAE's token of each cell moves between an edit's source and its exact target, relative to the
    source token's norm: mean over kept cells and over changed ones, and the largest over kept cells, per type. A
    kept cell's token moves when the VAE reads neighbouring pixels, so its target is not its source token."""
    size = pipe.config.generation.image_size
    world, grid = level_world(level, size), pipe.model.grid_for(size)
    g = torch.Generator().manual_seed(seed)
    result = {"level": level, "per_type": per_type, "seed": seed, "types": {}}
    for edit_type in EDIT_TYPES:
        edits = [sample_edit(g, world, edit_type) for _ in range(per_type)]
        src, tgt = _tokens(pipe, [e.source for e in edits], world), _tokens(pipe, [e.target for e in edits], world)
        shift = (tgt - src).norm(dim=-1) / src.norm(dim=-1).clamp_min(1e-6)  # (N, L)
        changed = torch.stack([changed_tokens(e, grid) for e in edits])
        result["types"][edit_type] = {
            "kept": float(shift[~changed].mean()),
            "kept_max": float(shift[~changed].max()),
            "changed": float(shift[changed].mean()) if changed.any() else None,
        }
    return result


def format_token_shift(result: dict) -> str:
    lines = [
        f"Source-to-target token shift, level {result['level']} ({result['per_type']} edits per type; "
        "|target - source| / |source| per cell)",
        "| edit type | kept cells, mean | kept cells, largest | changed cells, mean |",
        "|---|---|---|---|",
    ]
    for t, r in result["types"].items():
        changed = "-" if r["changed"] is None else f"{r['changed']:.3f}"
        lines.append(f"| {t} | {r['kept']:.3f} | {r['kept_max']:.3f} | {changed} |")
    return "\n".join(lines)


def format_locality(result: dict) -> str:
    head = f"Edit locality, level {result['level']} ({result['per_type']} edits per type, canvas {result['canvas']})"
    lines = [head, "| edit type | AUC | top hit | chance |", "|---|---|---|---|"]
    for t, r in result["types"].items():
        a = "-" if r["auc"] is None else f"{r['auc']:.3f}"
        lines.append(f"| {t} | {a} | {r['top_hit']:.3f} | {r['top_hit_chance']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a harmon model folder trained to edit")
    p.add_argument("--level", choices=LEVELS, default="grid")
    p.add_argument("--per-type", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--losses", action="store_true", help="also the target-token losses of each kind of token")
    p.add_argument("--token-shift", action="store_true", help="also how far kept and changed cells' tokens move")
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args(argv)
    pipe = load_for_analysis(args.model, args.threads)
    result = locality_study(pipe, args.level, args.per_type, args.seed)
    text = format_locality(result)
    if args.losses:
        result["losses"] = loss_study(pipe, args.level, args.per_type, args.seed)
        text += "\n\n" + format_losses(result["losses"])
    if args.token_shift:
        result["token_shift"] = token_shift_study(pipe, args.level, args.per_type, args.seed)
        text += "\n\n" + format_token_shift(result["token_shift"])
    report(text, result, args.json)


if __name__ == "__main__":
    main()
