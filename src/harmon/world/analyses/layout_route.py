"""Where the layout route of ``pipe.edit`` (:mod:`harmon.layout_edit`) loses an edit: reading, rewriting or drawing.

``python -m harmon.world.analyses.layout_route [--model M] --edits 40 --seed 0 --phrasing seen``: fresh grid edits
of every type (training pairs; instructions in the seen or held-out phrasings), and for each type

* read: the model's layout of the source equals the source's placed description;
* rewrite: the model's changes to the *true* source layout equal the edit's (:func:`layout_changes_answer`; a
  rewrite that first restates the named objects is judged on the changes after its mark);
* drawn from the truth: the edit made with the true layouts (the route's redraw alone), judged by the edit scorer
  (edit ok and preserved);
* the route: the whole route, the model's own reading and rewrite, judged the same way.

The last two share each edit's generator seed, so their difference is what the text steps cost.
"""

from __future__ import annotations

import argparse

import torch

from harmon.config import MAX_EDIT_CHECKS
from harmon.eval.metrics import pct, table
from harmon.layout_edit import (
    LayoutError,
    draw_edit,
    edit_from_answers,
    read_layout,
    rewrite_layout,
    stated_changes,
)
from harmon.world.analyses.runner import load_for_analysis, report
from harmon.world.detect2 import detect_objects_v2
from harmon.world.edit_grammar import EDIT_TYPES
from harmon.world.edit_scoring import score_edit
from harmon.world.edits import sample_edit
from harmon.world.free import level_world
from harmon.world.layout_edits import layout_changes_answer
from harmon.world.planning import placed_description
from harmon.world.render import render

FIGURES = ("read", "rewrite", "truth_ok", "truth_kept", "route_ok", "route_kept")


def _draw(pipe, image, before: str, said: str, seed: int, strength: float, checks: int = 1):
    """The route's redraw of ``image`` for a read layout and the rewrite's changes; None when an answer does not
    parse (the route would leave the image as it is)."""
    gen = pipe.config.generation
    try:
        plan = edit_from_answers(before, said, gen.plan_places)
    except LayoutError:
        return None
    settings, size = pipe.generation_settings()
    g = torch.Generator().manual_seed(seed)
    return draw_edit(pipe, image, plan, settings, size, strength, checks=checks, generator=g)[0]


def _verdict(edit, image, world) -> tuple[bool, bool]:
    if image is None:
        return False, True  # nothing drawn: the source stands, unedited
    v = score_edit(edit, detect_objects_v2(image, world))
    return v.edit_ok, v.preserved


def route_study(
    pipe, n: int, seed: int, phrasing: str = "seen", strength: float | None = None, checks: int | None = None
) -> dict:
    """Per edit type, the share of ``n`` edits right at each step (:data:`FIGURES`), redrawn at SDEdit
    ``strength``, the best of ``checks`` draws (None: the model's ``edit_strength``, ``edit_checks``)."""
    gen = pipe.config.generation
    strength = gen.edit_strength if strength is None else strength
    checks = gen.edit_checks if checks is None else checks
    world = level_world("grid", pipe.config.generation.image_size)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for edit_type in EDIT_TYPES:
        counts = dict.fromkeys(FIGURES, 0)
        done = 0
        while done < n:
            edit = sample_edit(g, world, edit_type, phrasing)
            truth_before, truth_after = placed_description(edit.source), layout_changes_answer(edit)
            if truth_before is None or truth_after is None:
                continue
            image, k = render(edit.source, world), seed * 100_003 + done
            before = read_layout(pipe, image)
            after = rewrite_layout(pipe, truth_before, edit.instruction)
            own_after = rewrite_layout(pipe, before, edit.instruction)
            counts["read"] += before == truth_before
            counts["rewrite"] += stated_changes(after) == truth_after
            ok, kept = _verdict(edit, _draw(pipe, image, truth_before, truth_after, k, strength, checks), world)
            counts["truth_ok"] += ok
            counts["truth_kept"] += kept
            ok, kept = _verdict(edit, _draw(pipe, image, before, own_after, k, strength, checks), world)
            counts["route_ok"] += ok
            counts["route_kept"] += kept
            done += 1
        out[edit_type] = {f: counts[f] / n for f in FIGURES} | {"count": n}
    out["overall"] = {f: sum(out[t][f] for t in EDIT_TYPES) / len(EDIT_TYPES) for f in FIGURES}
    out["overall"]["count"] = n * len(EDIT_TYPES)
    return out


def format_route(result: dict, phrasing: str) -> str:
    head = [
        "edit type",
        "read exact",
        "rewrite exact (true layout)",
        "drawn from the truth: edit ok",
        "preserved",
        "the route: edit ok",
        "preserved",
        "n",
    ]
    rows = [[t] + [pct(result[t][f]) for f in FIGURES] + [str(result[t]["count"])] for t in [*EDIT_TYPES, "overall"]]
    return f"The layout route step by step, grid level, {phrasing} phrasings (%)\n" + table(head, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--edits", type=int, default=40, help="edits per type")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phrasing", choices=["seen", "held_out"], default="seen")
    p.add_argument("--strength", type=float, default=None, help="SDEdit strength (default: the model's)")
    p.add_argument("--checks", type=int, default=None, help="draws per edit read back (default: the model's)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    if args.edits < 1:
        p.error("--edits must be >= 1")
    pipe = load_for_analysis(args.model, args.threads)
    if pipe.config.generation.edit_layout_request is None:
        p.error("the model records no layout route (config.generation.edit_layout_request)")
    if args.strength is not None and not 0 < args.strength <= 1:
        p.error("--strength must be in (0, 1]")
    if args.checks is not None and not 1 <= args.checks <= MAX_EDIT_CHECKS:
        p.error(f"--checks must be in [1, {MAX_EDIT_CHECKS}]")
    result = route_study(pipe, args.edits, args.seed, args.phrasing, args.strength, args.checks)
    report(format_route(result, args.phrasing), result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
