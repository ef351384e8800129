"""Plan, then draw: does the generator put objects where a prompt names their places, and does a layout the LLM
writes first lift position and colour attribution? (:mod:`harmon.world.planning`)

``python -m harmon.world.analyses.planning [--model M] --scenes 120 --prompts 240 --seed 0``:

(a) Placed prompts. Fresh grid scenes, each described with every object's quadrant ("a red circle in the top left
    and a blue square in the bottom right"); one image each. Right when the detector finds exactly the stated
    (colour, shape, quadrant) triples; also the share of stated objects found at their place. ``--order any``: each
    description lists its objects in an order drawn for its scene instead of reading order.
(b) GenEval prompts (balanced over the six tags), each drawn three ways and judged by GenEval's rules on the
    *original* prompt: directly; from a layout the world writes (the placed description of a scene that satisfies
    the prompt: what a perfect planner gives); and from the layout the model writes itself, greedily, when asked
    "Plan the layout: <prompt>". Beside them: the share of the model's plans that parse, and that satisfy the
    prompt as stated. ``--phrasing seen`` / ``held_out``: the prompts in the world grammar's seen or held-out
    wordings (grid level) instead of the canonical templates.
(c) Where the layout is lost. Placed prompts of fresh scenes at the first masked-autoregressive step (nothing drawn):
    linear probes (two thirds fit, one third test) for the shape each quadrant holds ("none" or a shape), read from
    the LLM's contribution at the buffers, from the decoder's condition at that quadrant's token, and from the
    condition at the next quadrant's token; and how far the cells' conditions lie apart (the broadcast study's
    spread over their norm).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from harmon.chat import answer_batch, ordered_plan
from harmon.world.analyses.probe import fit_linear_probe
from harmon.world.analyses.relations import conditions
from harmon.world.analyses.runner import load_for_analysis, report
from harmon.world.detection import detect_objects
from harmon.world.free import level_scene_for_prompt
from harmon.world.language import sample_eval_prompts_v2
from harmon.world.planning import (
    first_placed,
    parse_placed,
    placed_description,
    placed_matches,
    plan_request,
    scene_from_placed,
    shuffled,
)
from harmon.world.prompts import sample_eval_prompts, scene_for_prompt
from harmon.world.questions import PLACES, place_of
from harmon.world.sampling import sample_scene
from harmon.world.scene import WorldConfig
from harmon.world.scoring import TAGS, judge_prompt

WAYS = ("direct", "world's plan", "model's plan")
PHRASINGS = ("canonical", "seen", "held_out")  # (b)'s prompts: the templates, or the grammar's wordings


def _draw(pipe, texts: list[str], seed: int, batch_size: int = 16) -> list:
    generator = torch.Generator().manual_seed(seed)
    images = []
    for i in range(0, len(texts), batch_size):
        images += pipe.generate(texts[i : i + batch_size], generator=generator)
    return images


def placed_scores(pipe, scenes: int, seed: int, world: WorldConfig, order: str = "reading") -> dict[str, Any]:
    """(a): exact-layout and per-object accuracy of images drawn from placed descriptions of fresh scenes, their
    objects listed in reading order or (``order="any"``) in an order drawn for each scene."""
    g = torch.Generator().manual_seed(seed + 104_729)  # apart from the eval reports' and training's generators
    texts = []
    for _ in range(scenes):
        scene, text = first_placed(lambda: sample_scene(g, world))
        if order == "any":
            text = placed_description(scene, shuffled(scene.objects, g))
        texts.append(text)
    wanted = [parse_placed(text, world) for text in texts]
    images = _draw(pipe, texts, seed + 1)
    exact, found, stated = 0, 0, 0
    for text, want, image in zip(texts, wanted, images):
        dets = detect_objects(image, world)
        exact += placed_matches(text, dets, world.image_size, world)
        got = {(d.color, d.shape, place_of(d, world.image_size)) for d in dets}
        found += sum(triple in got for triple in want)
        stated += len(want)
    return {
        "exact": exact / scenes,
        "objects_at_place": found / stated,
        "n": scenes,
        "order": order,
        "examples": texts[:3],
    }


def plan_scores(pipe, prompts: int, seed: int, world: WorldConfig, phrasing: str = "canonical") -> dict[str, Any]:
    """(b): GenEval-rule accuracy per tag, drawn directly, from the world's plan and from the model's plan, on
    prompts in the canonical templates or (``phrasing`` "seen" / "held_out") in the grammar's wordings."""
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing must be one of {PHRASINGS}, got {phrasing!r}")
    g = torch.Generator().manual_seed(seed + 130_363)
    if phrasing == "canonical":
        metas, scene_for = sample_eval_prompts(prompts, g, world), scene_for_prompt
    else:
        metas, scene_for = sample_eval_prompts_v2(prompts, g, world, phrasing), level_scene_for_prompt
    metas = [m for m in metas if not m.get("held_out")]
    oracle = [first_placed(lambda m=m: scene_for(m, g, world, allow_held_out=True))[1] for m in metas]
    plans = answer_batch(
        pipe, [[{"role": "user", "content": plan_request(m["prompt"])}] for m in metas], max_new_tokens=80
    )
    stated = [scene_from_placed(p, world) for p in plans]
    places = pipe.config.generation.plan_places  # drawn as generate(..., plan=True) draws a plan
    ordered = [ordered_plan(p, places) for p in plans] if places else plans
    texts = {"direct": [m["prompt"] for m in metas], "world's plan": oracle, "model's plan": ordered}
    out: dict[str, Any] = {"n": len(metas), "tag_n": {t: sum(m["tag"] == t for m in metas) for t in TAGS}, "ways": {}}
    out["phrasing"] = phrasing
    for k, way in enumerate(WAYS):
        drawn = [i for i, text in enumerate(texts[way]) if text.strip()]  # an empty plan draws nothing: wrong
        images = dict(zip(drawn, _draw(pipe, [texts[way][i] for i in drawn], seed + 2 + k)))
        right = [i in images and judge_prompt(m, detect_objects(images[i], world)) for i, m in enumerate(metas)]
        per_tag = {t: _share([r for m, r in zip(metas, right) if m["tag"] == t]) for t in TAGS}
        out["ways"][way] = {"tags": per_tag, "overall": sum(per_tag.values()) / len(per_tag)}
    out["plans_parse"] = _share([s is not None for s in stated])
    holds = [s is not None and judge_prompt(m, s.objects) for m, s in zip(metas, stated)]
    out["plans_hold"] = _share(holds)
    out["plans_hold_tags"] = {t: _share([h for m, h in zip(metas, holds) if m["tag"] == t]) for t in TAGS}
    out["examples"] = [(m["prompt"], p) for m, p in zip(metas[:6], plans[:6])]
    return out


def layout_probes(pipe, scenes: int, seed: int, world: WorldConfig, probe_steps: int = 200) -> dict[str, Any]:
    """(c): test accuracy of linear probes for what each quadrant holds, from the LLM's contribution and from the
    decoder's conditions at the first step, with the cells' spread."""
    if pipe.model.grid_for(world.image_size) != (2, 2):
        raise ValueError("the layout probes read one token per quadrant: they need a 2 x 2 token grid")
    g = torch.Generator().manual_seed(seed + 15_485_863)
    texts = [first_placed(lambda: sample_scene(g, world))[1] for _ in range(scenes)]
    classes = ["none", *world.shapes]
    held = [{place: shape for _, shape, place in parse_placed(t, world)} for t in texts]
    y = torch.tensor([[classes.index(at.get(q, "none")) for q in PLACES] for at in held])  # (N, 4)
    llm, cond = zip(*(conditions(pipe, texts[i : i + 100]) for i in range(0, len(texts), 100)))
    llm, cond = torch.cat(llm).flatten(1).float().cpu(), torch.cat(cond).float().cpu()  # (N, nb*D), (N, 4, D)
    n = 2 * scenes // 3
    out: dict[str, Any] = {"n": scenes, "places": {}}
    for c, place in enumerate(PLACES):
        yc = y[:, c]
        reads = {
            "llm (buffers)": llm,
            "condition at this cell": cond[:, c],
            "condition at the next cell": cond[:, (c + 1) % 4],
        }
        row = {"chance": float(torch.bincount(yc[n:]).max()) / len(yc[n:])}
        for name, x in reads.items():
            row[name] = fit_linear_probe(x[:n], yc[:n], x[n:], yc[n:], steps=probe_steps)
        out["places"][place] = row
    spread = (cond - cond.mean(1, keepdim=True)).norm(dim=-1).mean() / cond.norm(dim=-1).mean()
    out["cells' spread"] = float(spread)
    return out


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def format_planning(result: dict[str, Any]) -> str:
    a, lines = result.get("placed"), []
    if a:
        lines += [
            f"(a) placed prompts, {a['n']} fresh grid scenes ({a.get('order', 'reading')} order): exact layout "
            f"{a['exact']:.1%}, stated objects at their place {a['objects_at_place']:.1%}",
            "",
        ]
    wording = {"canonical": "", "seen": ", seen wordings", "held_out": ", held-out wordings"}
    phrasing = wording[result["plans"].get("phrasing", "canonical")]
    lines += [
        f"(b) {result['plans']['n']} GenEval prompts (seen pairs{phrasing}), GenEval rules on the original prompt, %",
        "| drawn from | " + " | ".join(TAGS) + " | overall |",
        "|---" * (len(TAGS) + 2) + "|",
    ]
    for way, r in result["plans"]["ways"].items():
        lines.append(
            f"| {way} | " + " | ".join(f"{100 * r['tags'][t]:.1f}" for t in TAGS) + f" | {100 * r['overall']:.1f} |"
        )
    b = result["plans"]
    if "tag_n" in b:
        lines.append("| n | " + " | ".join(str(b["tag_n"][t]) for t in TAGS) + f" | {b['n']} |")
    lines.append(
        f"\nthe model's plans: {b['plans_parse']:.1%} parse, {b['plans_hold']:.1%} satisfy the prompt as stated"
    )
    if "plans_hold_tags" in b:
        lines.append("by tag: " + ", ".join(f"{t} {100 * v:.1f}" for t, v in b["plans_hold_tags"].items()))
    c = result.get("probes")
    if c:
        lines.append(f"\n(c) what each quadrant holds, linear probes at the first step ({c['n']} placed prompts)")
        names = list(next(iter(c["places"].values())))
        lines += ["| quadrant | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {q} | " + " | ".join(f"{r[k]:.3f}" for k in names) + " |" for q, r in c["places"].items()]
        spread = c["cells' spread"]
        lines.append(f"cells' spread over their norm: {spread:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--scenes", type=int, default=120, help="placed prompts for (a); 0 leaves it out")
    p.add_argument("--prompts", type=int, default=240)
    p.add_argument("--probe-scenes", type=int, default=1200, help="placed prompts for (c); 0 leaves it out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--order", choices=["reading", "any"], default="reading", help="(a): objects listed in reading or any order"
    )
    p.add_argument("--phrasing", choices=PHRASINGS, default="canonical", help="(b): the prompts' wordings")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    if args.scenes < 0 or args.prompts < len(TAGS) or 0 < args.probe_scenes < 30 or args.probe_scenes < 0:
        p.error(f"need --scenes >= 0, --prompts >= {len(TAGS)} and --probe-scenes 0 or >= 30")
    pipe = load_for_analysis(args.model, args.threads)
    world = WorldConfig(image_size=pipe.config.generation.image_size)
    result = {"placed": placed_scores(pipe, args.scenes, args.seed, world, args.order)} if args.scenes else {}
    result["plans"] = plan_scores(pipe, args.prompts, args.seed, world, args.phrasing)
    if args.probe_scenes:
        result["probes"] = layout_probes(pipe, args.probe_scenes, args.seed, world)
    report(format_planning(result), result, args.json)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
