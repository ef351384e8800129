"""Why is position at chance? Measurements of the generator's condition (``python -m harmon.world.analyses.relations``).

The generator draws each token from the diffusion head conditioned on the MAR decoder's output at that token, which
sees the prompt only through the LLM's outputs at the image positions (at the first step, when nothing is drawn,
only at the buffer positions). For canonical position prompts of the grid world ("a red circle to the left of a blue
square"), on the given model:

(a) Sensitivity. How far the decoder's conditions (and the LLM's contribution, proj_out of its outputs) move when
    "left of" becomes "right of" (or "above" "below"), against other one-word edits (a colour, a shape) and against
    two sampling outcomes of the same prompt (a different first token drawn from two scenes of the prompt). Relative
    L2 distance ||a - b|| / ||a|| and cosine similarity, averaged over tokens and prompts, at the first step.
(b) Content. Linear probes from the first step's LLM contribution (buffer positions) and decoder conditions (all
    tokens) to the prompt's relation (4 classes), and, for scale, to the positioned object's colour and shape.
(c) Learnability with one object per token. With the positioned object already drawn at its token (the shipped
    model's grid: one object per token), can the condition of each other token tell whether the second object may go
    there (the asked relation holds from the drawn object to that cell)? A linear and a one-hidden-layer probe on
    the conditions, tested on other prompts; and the same probes fed the conditions of the flipped prompt, which
    should fail if the condition carries the relation. For scale, the same one-hidden-layer probe on the geometry
    alone (which token is drawn, which is asked) and on the geometry plus the relation: the answer is a simple
    function of the latter, so a generator whose condition carried the relation could learn where to draw.
(d) What it draws there. In the same setting, each other token's condition, under the model's own guidance and
    sampling settings, is sampled by the diffusion head and the token decoded alone on an empty scene: of the draws
    that show the reference object, the share on tokens where the asked relation holds, against the share such tokens
    have among the others (what a placement blind to the relation gives).
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from harmon.eval.metrics import RELATIONS, relation
from harmon.images import tensor_to_pil
from harmon.prompts import generation_prompt, unconditional_prompt
from harmon.tokenizer import USER_TEXT
from harmon.world.analyses.probe import fit_linear_probe
from harmon.world.detection import detect_objects
from harmon.world.prompts import OPPOSITE, RELATION_TEXT, sample_prompt, scene_for_prompt
from harmon.world.render import render
from harmon.world.scene import Scene, WorldConfig

logger = logging.getLogger(__name__)

FLIP = {RELATION_TEXT[r]: RELATION_TEXT[OPPOSITE[r]] for r in RELATION_TEXT}


def _ids(pipe, prompts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded generation prompts; None stands for the unconditional prompt of guidance."""
    seqs = [
        pipe.encode_prompt(unconditional_prompt()) if p is None else pipe.encode_prompt(generation_prompt(USER_TEXT), p)
        for p in prompts
    ]
    return pipe.pad_prompts(seqs)


@torch.no_grad()
def conditions(
    pipe, prompts: list[str | None], tokens: torch.Tensor | None = None, visible: torch.Tensor | None = None
):
    """(LLM contribution (N, nb + V, D_enc), decoder conditions (N, L, D_dec)) for ``prompts`` (None: the
    unconditional prompt); ``tokens`` (N, L, C) with ``visible`` (N, L) bool known (same count per row), or nothing
    known (the first step)."""
    model, size = pipe.model, pipe.config.generation.image_size
    grid = model.grid_for(size)
    n, seq = len(prompts), grid[0] * grid[1]
    if tokens is None:
        tokens = torch.zeros(n, seq, model.config.mar.token_dim, device=pipe.device)
        visible = torch.zeros(n, seq, dtype=torch.bool, device=pipe.device)
    mask = ~visible
    ids, text_mask = _ids(pipe, prompts)
    x_enc, z_enc = model.extract_visual_feature(tokens, mask, grid)
    refined = model.refine_with_llm(x_enc, z_enc, text_mask, input_ids=ids)  # (N, nb + V, D_enc)
    return refined - x_enc, model.mar.forward_decoder(refined, mask, grid)  # (N, nb+V, D_enc), (N, L, D_dec)


def _distance(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(relative L2, cosine), per token then averaged: a, b (N, T, D)."""
    rel = (a - b).norm(dim=-1) / a.norm(dim=-1).clamp_min(1e-9)
    return float(rel.mean()), float(F.cosine_similarity(a, b, dim=-1).mean())


def _edited(prompts: list[dict], world: WorldConfig, what: str) -> list[str]:
    out = []
    for p in prompts:
        text, obj = p["prompt"], p["include"][1]
        if what == "relation":
            phrase = RELATION_TEXT[obj["position"][0]]
            out.append(text.replace(f" {phrase} ", f" {FLIP[phrase]} ", 1))
        elif what == "colour":
            other = next(c for c in world.color_names if c not in text.split())
            out.append(text.replace(f" {obj['color']} ", f" {other} ", 1))
        else:
            other = next(s for s in world.shapes if s not in text.split())
            out.append(text.replace(f" {obj['class']} ", f" {other} ", 1))
    return out


def _tokens(pipe, scenes, world) -> torch.Tensor:
    pixels = torch.stack([torch.from_numpy(np.array(render(s, world))).permute(2, 0, 1) for s in scenes])
    return pipe.model.encode_images(pixels.float().to(pipe.device) / 127.5 - 1.0)  # (N, L, C)


def _token_of(box, size: int, side: int) -> int:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return int(cy // (size / side)) * side + int(cx // (size / side))


def sensitivity(pipe, prompts: list[dict], world: WorldConfig, seed: int) -> dict[str, dict[str, float]]:
    """(a): distances between first-step conditions of each prompt and its edits, and between two drawn tokens."""
    texts = [p["prompt"] for p in prompts]
    base = conditions(pipe, texts)
    out = {}
    for what in ("relation", "colour", "shape"):
        other = conditions(pipe, _edited(prompts, world, what))
        out[what] = dict(zip(("llm_l2", "llm_cos"), _distance(base[0], other[0])))
        out[what] |= dict(zip(("cond_l2", "cond_cos"), _distance(base[1], other[1])))
    pair = []
    for k in range(2):  # two outcomes of the same prompt: a different first token drawn from two scenes
        g = torch.Generator().manual_seed(seed * 7 + k)
        scenes = [scene_for_prompt(p, g, world) for p in prompts]
        tokens = _tokens(pipe, scenes, world)
        visible = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        visible[torch.arange(len(prompts)), torch.randint(0, tokens.shape[1], (len(prompts),), generator=g)] = True
        pair.append(conditions(pipe, texts, tokens, visible))
    out["two outcomes"] = {
        "cond_l2": _distance(pair[0][1], pair[1][1])[0],
        "cond_cos": _distance(pair[0][1], pair[1][1])[1],
    }
    return out


def content_probes(
    pipe, prompts: list[dict], world: WorldConfig, n_train: int, probe_steps: int = 100
) -> dict[str, dict[str, float]]:
    """(b): linear-probe test accuracy of relation, colour and shape of the positioned object, from the first step."""
    llm, cond = conditions(pipe, [p["prompt"] for p in prompts])
    feats = {"llm (buffers)": llm.flatten(1).float().cpu(), "condition (tokens)": cond.flatten(1).float().cpu()}
    labels = {
        "relation": [RELATIONS.index(p["include"][1]["position"][0]) for p in prompts],
        "colour": [world.color_names.index(p["include"][1]["color"]) for p in prompts],
        "shape": [world.shapes.index(p["include"][1]["class"]) for p in prompts],
    }
    out = {}
    for task, y in labels.items():
        y = torch.tensor(y)
        chance = float(torch.bincount(y[n_train:]).max()) / len(y[n_train:])
        out[task] = {"chance": chance}
        for name, x in feats.items():
            out[task][name] = fit_linear_probe(x[:n_train], y[:n_train], x[n_train:], y[n_train:], steps=probe_steps)
    return out


def _mlp_probe(x_tr, y_tr, x_te, y_te, hidden: int = 64, steps: int = 400, seed: int = 0) -> float:
    """Test accuracy of a one-hidden-layer classifier (Adam, full batch, weight decay) on standardised features."""
    mu, sd = x_tr.mean(0), x_tr.std(0).clamp_min(1e-6)
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    torch.manual_seed(seed)  # the layers' init draws from the global generator
    net = torch.nn.Sequential(torch.nn.Linear(x_tr.shape[1], hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x_tr), y_tr).backward()
        opt.step()
    with torch.no_grad():
        return float((net(x_te).argmax(1) == y_te).float().mean())


def _placements(pipe, prompts: list[dict], world: WorldConfig, seed: int):
    """The setting of (c) and (d): a scene of each prompt, its tokens (N, L, C), the (N, L) bool token of the
    positioned object (drawn), and for every other token a row (prompt, token) with label 1 where the asked
    relation holds from the positioned object to the reference object centred on that token."""
    g = torch.Generator().manual_seed(seed)
    scenes = [scene_for_prompt(p, g, world) for p in prompts]
    tokens = _tokens(pipe, scenes, world)  # (N, L, C)
    side = round(tokens.shape[1] ** 0.5)
    cell = world.image_size / side
    rows, labels, drawn = [], [], torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    for i, (p, scene) in enumerate(zip(prompts, scenes)):
        obj, ref = p["include"][1], p["include"][0]
        a = next(o for o in scene.objects if o.pair == (obj["color"], obj["class"]))
        b = next(o for o in scene.objects if o.pair == (ref["color"], ref["class"]))
        s = _token_of(a.bbox, world.image_size, side)
        drawn[i, s] = True
        for t in range(side * side):
            if t != s:
                cx, cy = (t % side + 0.5) * cell, (t // side + 0.5) * cell
                box = (cx - b.width / 2, cy - b.height / 2, cx + b.width / 2, cy + b.height / 2)
                rows.append((i, t))
                labels.append(int(obj["position"][0] in relation(a.bbox, box)))
    return tokens, drawn, rows, labels


def placement_probe(
    pipe, prompts: list[dict], world: WorldConfig, n_train: int, seed: int, probe_steps: int = 400
) -> dict[str, float]:
    """(c): with the positioned object drawn at its token, can each other token's condition tell whether the
    reference object may go there? Probes fit on the true prompts' conditions of ``n_train`` prompts, tested on the
    rest, with the true and with the flipped prompts' conditions."""
    tokens, drawn, rows, labels = _placements(pipe, prompts, world, seed)
    side = round(tokens.shape[1] ** 0.5)
    feats = {}
    for name, texts in (("true", [p["prompt"] for p in prompts]), ("flipped", _edited(prompts, world, "relation"))):
        cond = conditions(pipe, texts, tokens, drawn)[1].float().cpu()  # (N, L, D_dec)
        feats[name] = torch.stack([cond[i, t] for i, t in rows])
    y = torch.tensor(labels)
    train = torch.tensor([i < n_train for i, _ in rows])
    test = ~train
    out = {"chance": max(float(y[test].float().mean()), 1 - float(y[test].float().mean()))}
    x, n = feats["true"], probe_steps
    out["linear, true prompt"] = fit_linear_probe(x[train], y[train], x[test], y[test], steps=n // 4)
    out["mlp, true prompt"] = _mlp_probe(x[train], y[train], x[test], y[test], steps=n)
    out["mlp, flipped prompt's conditions"] = _mlp_probe(x[train], y[train], feats["flipped"][test], y[test], steps=n)
    rel = [RELATIONS.index(prompts[i]["include"][1]["position"][0]) for i, _ in rows]
    drawn_at = [int(drawn[i].nonzero()[0]) for i, _ in rows]
    where = torch.cat(
        [F.one_hot(torch.tensor(drawn_at), side * side), F.one_hot(torch.tensor([t for _, t in rows]), side * side)], 1
    )
    with_rel = torch.cat([where, F.one_hot(torch.tensor(rel), 4)], 1).float()
    out["mlp, geometry only (no relation)"] = _mlp_probe(
        where[train].float(), y[train], where[test].float(), y[test], steps=n
    )
    out["mlp, geometry + relation (oracle)"] = _mlp_probe(with_rel[train], y[train], with_rel[test], y[test], steps=n)
    return out


@torch.no_grad()
def read_alone(pipe, tokens: torch.Tensor, where: torch.Tensor, world: WorldConfig, chunk: int = 256) -> list[set]:
    """The (colour, shape) pairs the detector finds when each token (M, C) is decoded alone at its cell ``where``
    (M,) of an otherwise empty scene."""
    model = pipe.model
    blank = _tokens(pipe, [Scene(objects=(), image_size=world.image_size)], world)  # (1, L, C)
    grid = model.grid_for(world.image_size)
    found = []
    for k in range(0, tokens.shape[0], chunk):
        canvas = blank.expand(min(chunk, tokens.shape[0] - k), -1, -1).clone()
        canvas[torch.arange(canvas.shape[0]), where[k : k + chunk]] = tokens[k : k + chunk].to(canvas.dtype)
        found += [
            {d.pair for d in detect_objects(im, world)} for im in tensor_to_pil(model.decode_tokens(canvas, grid))
        ]
    return found


@torch.no_grad()
def drawn_placement(
    pipe, prompts: list[dict], world: WorldConfig, seed: int, samples: int = 4, chunk: int = 256
) -> dict[str, float]:
    """(d): in (c)'s setting, what the generator draws at each other token (module docstring). Returns shares of
    all draws (reference object, positioned object again, nothing) and, of the reference object's draws, the share
    on relation-holding tokens beside that of a relation-blind placement."""
    model, gen = pipe.model, pipe.config.generation
    tokens, drawn, rows, labels = _placements(pipe, prompts, world, seed)
    texts = [p["prompt"] for p in prompts]
    idx = torch.tensor(rows)  # (M, 2)
    branches = [texts] + ([[None] * len(texts)] if gen.guidance_scale != 1.0 else [])  # conditional, unconditional
    z = torch.cat([conditions(pipe, b, tokens, drawn)[1][idx[:, 0], idx[:, 1]] for b in branches])  # (G·M, Dd)
    new = model.mar.diffloss.sample(
        z.repeat_interleave(samples, dim=0),
        temperature=gen.temperature,
        cfg=gen.guidance_scale,
        generator=torch.Generator().manual_seed(seed + 1),
        num_steps=gen.num_sampling_steps,
    )  # (M·samples, C)
    found = read_alone(pipe, new, idx[:, 1].repeat_interleave(samples), world, chunk)
    holds = torch.tensor(labels).repeat_interleave(samples).bool()
    pairs = [(p["include"][0]["color"], p["include"][0]["class"]) for p in prompts]
    pos = [(p["include"][1]["color"], p["include"][1]["class"]) for p in prompts]
    owner = idx[:, 0].repeat_interleave(samples).tolist()
    ref = torch.tensor([pairs[i] in f for i, f in zip(owner, found)])
    n = len(found)
    return {
        "draws": float(n),
        "reference object drawn": float(ref.float().mean()),
        "positioned object drawn again": sum(pos[i] in f for i, f in zip(owner, found)) / n,
        "nothing drawn": sum(not f for f in found) / n,
        "reference draws on relation-holding tokens": float(holds[ref].float().mean()) if ref.any() else float("nan"),
        "relation-holding tokens among the others (blind placement)": float(torch.tensor(labels).float().mean()),
    }


def format_report(result: dict) -> str:
    """The three measurements as Markdown tables."""
    lines = ["(a) first-step distance from the prompt's own conditions, per token (mean over prompts)", ""]
    lines += [
        "| edit | LLM contribution rel. L2 | cosine | decoder condition rel. L2 | cosine |",
        "|---|---|---|---|---|",
    ]
    for what, d in result["sensitivity"].items():
        cells = [f"{d[k]:.3f}" if k in d else "-" for k in ("llm_l2", "llm_cos", "cond_l2", "cond_cos")]
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    lines += ["", "(b) linear probes from the first step (test accuracy)", ""]
    lines += ["| label | chance | LLM contribution (buffers) | decoder conditions (tokens) |", "|---|---|---|---|"]
    for task, r in result["content"].items():
        lines.append(f"| {task} | {r['chance']:.3f} | {r['llm (buffers)']:.3f} | {r['condition (tokens)']:.3f} |")
    lines += ["", "(c) may the reference object go at this token? (one object per token, positioned object drawn)", ""]
    lines += ["| probe | test accuracy |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in result["placement"].items()]
    if "drawn" in result:
        lines += ["", "(d) what the generator draws at the other tokens (positioned object drawn; guided samples)", ""]
        lines += ["| measure | value |", "|---|---|"]
        lines += [f"| {k} | {v:.0f} |" if k == "draws" else f"| {k} | {v:.3f} |" for k, v in result["drawn"].items()]
    return "\n".join(lines)


def load_for_study(model: str | None):
    """The model folder (default: the shipped model) in fp32 and eval mode, and the world at its image size."""
    from harmon.pipeline import HarmonPipeline
    from harmon.shipped import shipped_model_path

    pipe = HarmonPipeline.from_pretrained(model or shipped_model_path(), device="cpu", dtype=torch.float32)
    pipe.model.eval()
    return pipe, WorldConfig(image_size=pipe.config.generation.image_size)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--prompts", type=int, default=600, help="position prompts; 2/3 fit the probes, 1/3 test them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draw-prompts", type=int, default=200, help="prompts of (d), each other token sampled 4 times")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t = time.perf_counter()
    pipe, world = load_for_study(args.model)
    g = torch.Generator().manual_seed(args.seed)
    prompts = [sample_prompt(g, "position", config=world) for _ in range(args.prompts)]
    n_train = 2 * args.prompts // 3
    result = {
        "sensitivity": sensitivity(pipe, prompts[:200], world, args.seed),
        "content": content_probes(pipe, prompts, world, n_train),
        "placement": placement_probe(pipe, prompts, world, n_train, args.seed),
        "drawn": drawn_placement(pipe, prompts[: args.draw_prompts], world, args.seed),
    }
    logger.info("%s", format_report(result))
    logger.info("\n%d position prompts (seed %d), %.0f s", args.prompts, args.seed, time.perf_counter() - t)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
