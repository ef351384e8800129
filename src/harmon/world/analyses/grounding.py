"""Does the model find a named object's place, and name what a place holds? Grounding on grid scenes.

``python -m harmon.world.analyses.grounding [--model M] --scenes 200 --seed 0``: fresh grid-level scenes (a
generator of their own, apart from training's records), every question of
:func:`harmon.world.questions.where_questions` about each ("Where is the red circle?" -> "Top left"; "What is in the
top left?" -> "A red circle" / "Nothing"), greedy answers. An answer is right when it is the gold one up to case, a
leading article and a final full stop. Beside each kind's accuracy: what always giving its most common gold answer
scores. The same scenes' position questions (:func:`harmon.world.questions.position_question`, balanced yes / no)
are asked too: finding each named object's place is what they need first; and again, answered with both places
first ("... Say where each is first." -> "The red circle is top left, the blue square is top right: yes",
:func:`harmon.world.questions.reasoned`, judged by POPE's rule).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from typing import Any

import torch

from harmon.eval.metrics import pope_answer
from harmon.world.analyses.runner import load_for_analysis, report
from harmon.world.questions import position_question, reasoned, where_questions
from harmon.world.render import render
from harmon.world.sampling import sample_scene
from harmon.world.scene import WorldConfig

KINDS = ("where is", "what is in", "position", "position, places first")


def normalised(answer: str) -> str:
    """Lower case, no leading article, no final full stop: "An orange circle." -> "orange circle"."""
    return re.sub(r"^(an?|the) ", "", answer.strip().lower()).rstrip(".").strip()


def _kind(question: dict[str, Any]) -> str:
    if question["type"] == "position":
        return "position, places first" if question.get("places_first") else "position"
    return "where is" if question["question"].startswith("Where is") else "what is in"


def grounding_scores(pipe, scenes: int, seed: int, world: WorldConfig | None = None) -> dict[str, Any]:
    """Accuracy per kind (:data:`KINDS`) over the questions of ``scenes`` fresh scenes, with the majority baseline."""
    world = world or WorldConfig()
    g = torch.Generator().manual_seed(seed + 7919)  # apart from the eval reports' generators
    images, questions = [], []
    for _ in range(scenes):
        scene = sample_scene(g, world)
        image = render(scene, world)
        asked = where_questions(scene)
        pos = position_question(scene, g)
        if pos is not None:
            asked.append(pos)
            worded = reasoned(pos, scene)
            if worded is not None:
                asked.append({**worded, "places_first": True})
        for q in asked:
            images.append(image)
            questions.append(q)
    answers = pipe.describe_many(images, [q["question"] for q in questions], max_new_tokens=40)
    out: dict[str, Any] = {"scenes": scenes, "seed": seed, "kinds": {}}
    for kind in KINDS:
        rows = [(q, a) for q, a in zip(questions, answers) if _kind(q) == kind]
        if kind.startswith("position"):
            right = [pope_answer(a) == pope_answer(q["answer"]) for q, a in rows]  # the verdict, by POPE's rule
        else:
            right = [normalised(a) == normalised(q["answer"]) for q, a in rows]
        gold = Counter(
            pope_answer(q["answer"]) if kind.startswith("position") else normalised(q["answer"]) for q, _ in rows
        )
        out["kinds"][kind] = {
            "accuracy": sum(right) / max(len(rows), 1),
            "majority": gold.most_common(1)[0][1] / len(rows) if rows else None,
            "n": len(rows),
            "examples": [(q["question"], q["answer"], a) for q, a in rows[:3]],
        }
    return out


def format_grounding(result: dict[str, Any]) -> str:
    lines = ["| question | accuracy | always the commonest answer | n |", "|---|---|---|---|"]
    for kind, r in result["kinds"].items():
        majority = "-" if r["majority"] is None else f"{r['majority']:.1%}"
        lines.append(f"| {kind} | {r['accuracy']:.1%} | {majority} | {r['n']} |")
    lines.append(f"\n{result['scenes']} fresh grid scenes, seed {result['seed']}, greedy answers")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: the shipped model)")
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    if args.scenes < 1:
        p.error(f"--scenes must be >= 1, got {args.scenes}")
    pipe = load_for_analysis(args.model, args.threads)
    result = grounding_scores(pipe, args.scenes, args.seed)
    report(format_grounding(result), result, args.json)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
