"""Does the MAR decoder tell the cells apart? (``python -m harmon.world.analyses.broadcast``)

A follow-up to :mod:`harmon.world.analyses.relations`, which found that the relation of a position prompt barely
reaches the diffusion conditions. Two measurements on canonical position prompts of the grid world:

(a) Geometry through the decoder. Layer by layer, the rows of the still-masked cells (the mask token plus the cell's
    row of the decoder's position table) against the rows the decoder reads the prompt from (buffers, and drawn
    tokens): their norms, and the cells' spread (mean distance of each masked cell's row from the mean of the image's
    masked cells). At the first step (nothing drawn) and with the positioned object drawn at its true cell. The last
    row is the decoder's output before the diffusion position table is added: a spread near 0 means every masked
    cell receives the same condition, and only that input-independent table tells the head which cell it samples.
(b) Can the head's objective learn where to draw? A fresh diffusion head of the model's head configuration is trained
    with the model's own diffusion loss on the model's VAE tokens of position scenes, each cell conditioned on clean
    features through a learned linear map: which cell, the two named objects' shapes and colours (by role: positioned
    object A, reference B) and the relation, or the same without the relation (blind). Every test cell is then
    sampled on its own (no guidance), decoded alone on an empty scene and read by the world's detector. Reported:
    the share of A's and B's draws on cells where the relation allows them (blind: about 1/2 on the 2 x 2 grid). The
    same reading of the scenes' own tokens gives 1.
(c) Where an object is, on the understanding path. Linear probes for the cell of each object's token from the rows
    the encoder computes for a whole scene (all tokens visible), stage by stage up to the LLM's input, and from the
    LLM's hidden states at that token after each of its layers.
(d) Where a position question is answered. Probes on the LLM's hidden states at the last prompt position, which
    writes the answer, for the two named objects' cells and for the answer.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import torch
import torch.nn.functional as F

from harmon.diffloss import DiffLoss
from harmon.eval.metrics import RELATIONS
from harmon.world.analyses.relations import _ids, _token_of, _tokens, load_for_study, read_alone
from harmon.world.prompts import sample_prompt, scene_for_prompt
from harmon.world.scene import WorldConfig

logger = logging.getLogger(__name__)


def _spread(rows: torch.Tensor) -> float:
    """Mean distance of each row from the mean of its image's rows: rows (N, K, D)."""
    return float((rows - rows.mean(dim=1, keepdim=True)).norm(dim=-1).mean())


def _norm(rows: torch.Tensor) -> float:
    return float(rows.norm(dim=-1).mean())


@torch.no_grad()
def decoder_stages(pipe, texts: list[str], tokens: torch.Tensor, visible: torch.Tensor):
    """The decoder's rows after each of its stages, as :meth:`MAR.forward_decoder` computes them for one sampling
    step: a list of (stage, (N, buffer + L, D)), and the (N, buffer + L) bool masks of the rows it reads the prompt
    from (buffers and visible tokens) and of the masked cells. tokens (N, L, C) with visible (N, L) bool, the same
    count of visible cells per row."""
    model = pipe.model
    mar, nb = model.mar, model.buffer_size
    grid = model.grid_for(pipe.config.generation.image_size)
    mask = ~visible
    ids, text_mask = _ids(pipe, texts)
    x_enc, z_enc = model.extract_visual_feature(tokens, mask, grid)
    refined = model.refine_with_llm(x_enc, z_enc, text_mask, input_ids=ids)
    n = len(texts)
    read = torch.cat([mask.new_ones(n, nb), visible], dim=1)
    x = mar.mask_token.to(refined.dtype).expand(n, read.shape[1], -1).clone()
    x[read] = mar.decoder_embed(refined).reshape(-1, x.shape[-1])
    x = x + mar.decoder_pos_embed(*grid)
    stages = [("decoder input (mask token + position table)", x)]
    for i, block in enumerate(mar.decoder_blocks):
        attn = block.attn(block.norm1(x))
        x = x + attn
        mlp = block.mlp(block.norm2(x))
        x = x + mlp
        stages += [(f"block {i}: attention output", attn), (f"block {i}: MLP output", mlp), (f"after block {i}", x)]
    stages.append(("decoder output (normed, before the diffusion table)", mar.decoder_norm(x)))
    return stages, read, torch.cat([mask.new_zeros(n, nb), mask], dim=1)


def decoder_geometry(pipe, texts: list[str], tokens: torch.Tensor, visible: torch.Tensor) -> list[dict[str, Any]]:
    """(a) for one step: per stage of the decoder, the masked cells' spread and norm and the read rows' norm."""
    stages, read, masked = decoder_stages(pipe, texts, tokens, visible)
    n, k = len(texts), int(masked[0].sum())
    rows = []
    for stage, h in stages:
        cells, src = h[masked].reshape(n, k, -1), h[read].reshape(n, -1, h.shape[-1])
        rows.append(
            {"stage": stage, "cells spread": _spread(cells), "cells norm": _norm(cells), "read norm": _norm(src)}
        )
    grid = pipe.model.grid_for(pipe.config.generation.image_size)
    table = pipe.model.mar.diffusion_pos_embed(*grid)[0].detach()  # (L, D)
    rows.append({"stage": "diffusion position table", "cells spread": _spread(table[None]), "cells norm": _norm(table)})
    return rows


def _object_cells(pipe, world: WorldConfig, n_scenes: int, seed: int):
    """Fresh scenes, each object as (scene index, cell of its token), the cells as labels and the 70 % that fit."""
    from harmon.world.sampling import sample_scene

    g = torch.Generator().manual_seed(seed)
    scenes = [sample_scene(g, world) for _ in range(n_scenes)]
    side = pipe.model.grid_for(world.image_size)[1]
    where = [(i, _token_of(o.bbox, world.image_size, side)) for i, s in enumerate(scenes) for o in s.objects]
    y = torch.tensor([c for _, c in where])
    return scenes, where, y, torch.arange(len(y)) < int(0.7 * len(y))


def _probes(features: dict[str, torch.Tensor], y: torch.Tensor, train: torch.Tensor) -> dict[str, float]:
    """Test accuracy of a linear probe for ``y`` from each named (N, D) feature, fitted on ``train``."""
    from harmon.world.analyses.probe import fit_linear_probe

    return {name: fit_linear_probe(x[train], y[train], x[~train], y[~train]) for name, x in features.items()}


def _llm_states(pipe, image, question: str) -> tuple[torch.Tensor, int]:
    """The LLM's hidden states after each layer, (layers, T, H), with ``image`` asked ``question`` as
    :meth:`HarmonPipeline.describe` asks (the last layer's after the final norm), and the image's first position."""
    from harmon import chat

    prompt = chat.render(pipe, [pipe._question_turn(image, question)])
    first = next(k for k, item in enumerate(prompt.items) if isinstance(item, chat.ImageSlot))
    out = pipe.model.llm.model(inputs_embeds=chat.embed(pipe, prompt.items), output_hidden_states=True)
    return torch.stack([h[0] for h in out.hidden_states[1:]]), first


@torch.no_grad()
def encoder_position(pipe, world: WorldConfig, n_scenes: int, seed: int) -> dict[str, float]:
    """(c) Linear probes for the cell of each object's token from the understanding path's rows (all tokens
    visible, as the LLM reads an image): after the position table, after each encoder block, at the encoder's
    output and at the LLM's input (proj_in); 70 % of the objects fit, the rest test. ``chance``: the most common
    cell's share of the test objects."""
    scenes, where, y, train = _object_cells(pipe, world, n_scenes, seed)
    model, mar = pipe.model, pipe.model.mar
    grid, nb = model.grid_for(world.image_size), model.buffer_size
    tokens = _tokens(pipe, scenes, world)
    stages = [("encoder input (tokens + position table, normed)", mar.embed_tokens(tokens, grid))]
    for i, block in enumerate(mar.encoder_blocks):
        stages.append((f"after encoder block {i}", block(stages[-1][1])))
    stages.append(("encoder output (normed)", mar.encoder_norm(stages[-1][1])))
    stages.append(("LLM input (proj_in)", model.visual_to_llm(stages[-1][1])[:, : grid[0] * grid[1]]))
    features = {}
    for name, h in stages:
        rows = h[:, nb:] if h.shape[1] > grid[0] * grid[1] else h  # image tokens only
        features[name] = torch.stack([rows[i, c] for i, c in where]).float()
    chance = float(torch.bincount(y[~train]).max()) / int((~train).sum())
    return {"chance": chance, **_probes(features, y, train)}


@torch.no_grad()
def llm_position(pipe, world: WorldConfig, n_scenes: int, seed: int) -> dict[str, float]:
    """(c), inside the LLM: the same probes on the LLM's hidden states at each object's image token, after each
    layer, with the image asked about as :meth:`HarmonPipeline.describe` asks (the image comes before the question,
    so these states do not depend on it; the last layer's are after the final norm). The LLM may recover a token's
    cell from its place in the sequence."""
    from harmon.world.render import render

    scenes, where, y, train = _object_cells(pipe, world, n_scenes, seed)
    states = []  # per scene: (layers, T, H) and the image's first position
    for scene in scenes:
        states.append(_llm_states(pipe, render(scene, world), "Describe the image."))
    layers = states[0][0].shape[0]
    features = {}
    for layer in range(layers):
        normed = " (normed)" if layer == layers - 1 else ""
        rows = [states[i][0][layer, states[i][1] + c] for i, c in where]
        features[f"LLM layer {layer} output{normed}, at the image token"] = torch.stack(rows).float()
    return _probes(features, y, train)


@torch.no_grad()
def question_position(pipe, world: WorldConfig, n_scenes: int, seed: int) -> dict[str, float]:
    """(d) Where a position question is answered: probes on the LLM's hidden states at the last prompt position (the
    one that writes the first answer token), after each layer, for the cell of the first named object, the cell of
    the second and the answer (Yes / No, balanced); with ``chance`` for each."""
    import re

    from harmon.world.questions import position_question
    from harmon.world.render import render
    from harmon.world.sampling import sample_scene

    g = torch.Generator().manual_seed(seed)
    side = pipe.model.grid_for(world.image_size)[1]
    states, labels = [], []
    while len(states) < n_scenes:
        scene = sample_scene(g, world)
        q = position_question(scene, g, positive=len(states) % 2 == 0)
        if q is None:
            continue
        words = re.match(r"Is the (\w+) (\w+) .+ the (\w+) (\w+)\?$", q["question"]).groups()
        a_pair, b_pair = (words[0], words[1]), (words[2], words[3])
        cell = {o.pair: _token_of(o.bbox, world.image_size, side) for o in scene.objects}
        states.append(_llm_states(pipe, render(scene, world), q["question"])[0][:, -1])  # (layers, H)
        labels.append((cell[a_pair], cell[b_pair], int(q["answer"] == "Yes")))
    train = torch.arange(n_scenes) < int(0.7 * n_scenes)
    out_acc: dict[str, float] = {}
    for k, what in enumerate(("first named object's cell", "second named object's cell", "answer")):
        y = torch.tensor([lab[k] for lab in labels])
        out_acc[f"{what}: chance"] = float(torch.bincount(y[~train]).max()) / int((~train).sum())
        features = {
            f"{what}: LLM layer {layer}": torch.stack([st[layer] for st in states]).float()
            for layer in range(states[0].shape[0])
        }
        out_acc.update(_probes(features, y, train))
    return out_acc


def _scenes(n: int, world: WorldConfig, g: torch.Generator) -> list[tuple[dict, Any]]:
    prompts = [sample_prompt(g, "position", config=world) for _ in range(n)]
    return [(p, scene_for_prompt(p, g, world)) for p in prompts]


def _drawn(pipe, pairs, world) -> tuple[torch.Tensor, torch.Tensor]:
    """The scenes' tokens, and the positioned object's true cell as the one visible token."""
    side = pipe.model.grid_for(world.image_size)[0]
    tokens = _tokens(pipe, [s for _, s in pairs], world)
    visible = torch.zeros(tokens.shape[:2], dtype=torch.bool)
    for i, (p, scene) in enumerate(pairs):
        a = p["include"][1]
        (obj,) = [o for o in scene.objects if (o.shape, o.color) == (a["class"], a["color"])]
        visible[i, _token_of(obj.bbox, world.image_size, side)] = True
    return tokens, visible


def geometry(pipe, n: int, world: WorldConfig, seed: int) -> dict[str, list[dict[str, Any]]]:
    """(a) at the first step and with the positioned object drawn."""
    pairs = _scenes(n, world, torch.Generator().manual_seed(seed))
    texts = [p["prompt"] for p, _ in pairs]
    tokens, visible = _drawn(pipe, pairs, world)
    nothing = torch.zeros_like(visible)
    return {
        "first step": decoder_geometry(pipe, texts, torch.zeros_like(tokens), nothing),
        "positioned object drawn": decoder_geometry(pipe, texts, tokens, visible),
    }


def _cell_data(pipe, pairs, world: WorldConfig, with_relation: bool):
    """Per cell: clean features (N*L, F), the scene's token (N*L, C), and (relation, cell, the named pairs by role,
    the role found at the cell or "empty")."""
    shapes, colors = list(world.shapes), list(world.color_names)
    side = pipe.model.grid_for(world.image_size)[0]
    cells, width = side * side, len(shapes) + len(colors)
    tokens = _tokens(pipe, [s for _, s in pairs], world).float()
    feats, labels = [], []
    for p, scene in pairs:
        ref, pos = p["include"]
        rel = pos["position"][0]
        named = {"A": (pos["color"], pos["class"]), "B": (ref["color"], ref["class"])}
        at = {_token_of(o.bbox, world.image_size, side): "A" if o.pair == named["A"] else "B" for o in scene.objects}
        ident = torch.zeros(2 * width)
        for j, entry in enumerate((pos, ref)):
            ident[j * width + shapes.index(entry["class"])] = 1
            ident[j * width + len(shapes) + colors.index(entry["color"])] = 1
        relation = torch.zeros(len(RELATIONS))
        if with_relation:
            relation[RELATIONS.index(rel)] = 1
        for c in range(cells):
            feats.append(torch.cat([F.one_hot(torch.tensor(c), cells).float(), relation, ident]))
            labels.append((rel, c, named, at.get(c, "empty")))
    return torch.stack(feats), tokens.reshape(-1, tokens.shape[-1]), labels


def read_draws(pipe, draws: torch.Tensor, labels: list, world: WorldConfig, allowed: dict) -> dict[str, float]:
    """Each draw (N*L, C) decoded alone at its cell (:func:`harmon.world.analyses.relations.read_alone`); the shares
    of A's and B's draws on the cells where the relation allows them.

    ``labels[i]`` = (relation, cell, named pairs {"A": (colour, shape), "B": ...}, role there or "empty");
    ``allowed[(relation, role)]`` = the cells where that role occurs for that relation."""
    found = read_alone(pipe, draws, torch.tensor([lab[1] for lab in labels]), world)
    counts = {"A allowed": 0, "A elsewhere": 0, "B allowed": 0, "B elsewhere": 0, "nothing": 0, "other": 0}
    for (rel, cell, named, _), pairs in zip(labels, found):
        roles = [role for role in ("A", "B") if named[role] in pairs]
        for role in roles:
            counts[f"{role} {'allowed' if cell in allowed[(rel, role)] else 'elsewhere'}"] += 1
        counts["nothing"] += not pairs
        counts["other"] += bool(pairs) and not roles
    out: dict[str, float] = {k: float(v) for k, v in counts.items()}
    for role in ("A", "B"):
        total = counts[f"{role} allowed"] + counts[f"{role} elsewhere"]
        out[f"{role} on allowed cells"] = counts[f"{role} allowed"] / total if total else float("nan")
    return out


def head_placement(
    pipe, world: WorldConfig, with_relation: bool, steps: int, n_train: int, n_test: int, seed: int, batch: int = 256
) -> dict[str, dict[str, float]]:
    """(b): a fresh head trained on clean cell conditions; where its draws land, and where the scenes' own tokens
    are read to be (the reading's check: 1 on allowed cells)."""
    g = torch.Generator().manual_seed(seed)
    x_tr, y_tr, lab_tr = _cell_data(pipe, _scenes(n_train, world, g), world, with_relation)
    x_te, y_te, lab_te = _cell_data(pipe, _scenes(n_test, world, g), world, with_relation)
    allowed: dict[tuple[str, str], set[int]] = {}
    for rel, cell, _, role in lab_tr:
        allowed.setdefault((rel, role), set()).add(cell)
    head = DiffLoss(pipe.model.config.mar.diffloss)
    head.initialize_weights(torch.Generator().manual_seed(seed))
    embed = torch.nn.Linear(x_tr.shape[1], head.config.z_channels)
    with torch.no_grad():  # torch's default init, drawn from the study's generator
        bound = x_tr.shape[1] ** -0.5
        embed.weight.uniform_(-bound, bound, generator=g)
        embed.bias.uniform_(-bound, bound, generator=g)
    opt = torch.optim.AdamW([*head.parameters(), *embed.parameters()], lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, x_tr.shape[0], (batch,), generator=g)
        loss = head(y_tr[idx].repeat(4, 1), embed(x_tr[idx]).repeat(4, 1), generator=g)  # 4 draws of t per cell
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        draws = head.sample(embed(x_te), generator=torch.Generator().manual_seed(seed + 1))
    tail = losses[-max(1, steps // 10) :] or [float("nan")]
    return {
        "draws": {**read_draws(pipe, draws, lab_te, world, allowed), "loss, last tenth": sum(tail) / len(tail)},
        "scenes' own tokens": read_draws(pipe, y_te, lab_te, world, allowed),
    }


def format_report(result: dict) -> str:
    lines = []
    for step, rows in result.get("geometry", {}).items():
        lines += [f"(a) {step}: masked cells' rows through the decoder (means over prompts)", ""]
        lines += ["| stage | cells' spread | cells' norm | read rows' norm |", "|---|---|---|---|"]
        for r in rows:
            read = f"{r['read norm']:.2f}" if "read norm" in r else "-"
            lines.append(f"| {r['stage']} | {r['cells spread']:.3f} | {r['cells norm']:.2f} | {read} |")
        lines.append("")
    if "encoder" in result:
        lines += ["(c) the cell of an object's token, read by a linear probe from the understanding path", ""]
        lines += ["| rows | test accuracy |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in result["encoder"].items()]
        lines.append("")
    if "question" in result:
        lines += ["(d) at the last prompt position of a position question (it writes the answer): linear probes", ""]
        lines += ["| label: rows | test accuracy |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in result["question"].items()]
        lines.append("")
    if "head" in result:
        lines += ["(b) a fresh diffusion head on clean cell conditions: where its draws land", ""]
        lines += ["| condition | A on allowed cells | B on allowed cells | loss, last tenth |", "|---|---|---|---|"]
        for name, r in result["head"].items():
            d = r["draws"]
            lines.append(
                f"| {name} | {d['A on allowed cells']:.3f} | {d['B on allowed cells']:.3f} | "
                f"{d['loss, last tenth']:.4f} |"
            )
            own = r["scenes' own tokens"]
            lines.append(
                f"| {name}: the scenes' own tokens, read the same way | {own['A on allowed cells']:.3f} | "
                f"{own['B on allowed cells']:.3f} | - |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--prompts", type=int, default=200, help="position prompts of (a)")
    p.add_argument("--head-steps", type=int, default=3000, help="training steps of (b)'s heads (0: skip (b))")
    p.add_argument("--scenes", type=int, default=4000, help="training scenes of (b); a tenth as many test it")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t = time.perf_counter()
    pipe, world = load_for_study(args.model)
    result: dict[str, Any] = {"geometry": geometry(pipe, args.prompts, world, args.seed)}
    result["encoder"] = encoder_position(pipe, world, args.scenes // 4, args.seed)
    result["encoder"].update(llm_position(pipe, world, args.scenes // 4, args.seed))
    result["question"] = question_position(pipe, world, args.scenes // 4, args.seed)
    if args.head_steps:
        n_test = max(1, args.scenes // 10)
        result["head"] = {
            name: head_placement(pipe, world, rel, args.head_steps, args.scenes, n_test, args.seed)
            for name, rel in (("cell + objects + relation", True), ("cell + objects (blind)", False))
        }
    logger.info("%s", format_report(result))
    logger.info("\n%d position prompts (seed %d), %.0f s", args.prompts, args.seed, time.perf_counter() - t)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
