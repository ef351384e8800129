"""``harmon eval``: the shapes world, GenEval generation, FID / KID, and the answer suites POPE / MME / multiple choice.

POPE, MME and multiple choice share one flow (read items, check their images, answer, score, print, write): each
command only names its reader, answerer, scorer, table and answer writer in an :class:`AnswerSuite`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harmon.cli.common import (
    add_generation_args,
    add_model_args,
    generation_settings,
    int_at_least,
    load_pipeline,
    output_file,
    output_folder,
    seed_value,
    write_json,
)
from harmon.cli.fid import add_fid

SHIPPED_GENEVAL_PROMPTS = Path(__file__).parent.parent / "assets" / "eval" / "shapes_geneval_metadata.jsonl"
# most fresh shapes-world items per kind: 2000 x the defaults, days on the tiny model; far more is a typo that
# would fill memory while the items are drawn, before any is scored
MAX_ITEMS = 1_000_000


def cmd_shapes(args: argparse.Namespace) -> int:
    from harmon.world import format_tables
    from harmon.world.evaluate import evaluate_shapes

    if not (args.prompts or args.questions or (args.shape_questions and args.level is None)):
        raise ValueError("nothing to evaluate: --prompts, --questions and --shape-questions are all 0")
    if args.level is not None:
        if args.fid:
            raise ValueError("--fid applies to the default report, not to --level")
        return _shapes_levels(args)
    pipe = load_pipeline(args)
    result = evaluate_shapes(
        pipe,
        n_prompts=args.prompts,
        n_questions=args.questions,
        seed=args.seed,
        n_shape_questions=args.shape_questions,
        world_fid=args.fid,
        **generation_settings(args),
    )
    tables = [result[k] for k in ("generation", "understanding") if k in result]
    print(format_tables(tables))
    if "shape_existence" in result:
        m = result["shape_existence"]
        print(
            '\nBare-shape existence ("Is there a <shape> in the image?", POPE\'s template, %): '
            + ", ".join(
                f"{k.replace('_', ' ')} {100 * m[k]:.1f}"
                for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")
            )
            + f", n {m['count']}"
        )
    if "world_distance" in result:
        from harmon.world.quality import format_world_distance

        print("\n" + format_world_distance(result["world_distance"]))
    for k in ("generation_seconds", "understanding_seconds"):
        if k in result:
            print(f"{k.replace('_', ' ')}: {result[k]:.1f}")
    write_json(args.json, result)
    return 0


def _shapes_levels(args: argparse.Namespace) -> int:
    """``harmon eval shapes --level ...``: world v2's report (level x phrasing x pair, with chance levels)."""
    from harmon.world.evaluate2 import evaluate_levels, format_levels
    from harmon.world.free import LEVELS

    levels = LEVELS if args.level == "all" else (args.level,)
    pipe = load_pipeline(args)
    result = evaluate_levels(pipe, levels, args.prompts, args.questions, args.seed, **generation_settings(args))
    print(format_levels(result))
    write_json(args.json, result)
    return 0


def cmd_shapes_edit(args: argparse.Namespace) -> int:
    """``harmon eval shapes-edit``: fresh edits per type and phrasing split, edited by the model, scored exactly."""
    from harmon.world.evaluate_edits import evaluate_edits, format_edits, pipeline_edit_fn

    splits = ("seen", "held_out") if args.phrasing == "both" else (args.phrasing,)
    pipe = load_pipeline(args)
    settings = generation_settings(args)
    edit_fn = pipeline_edit_fn(
        pipe,
        image_guidance_scale=args.image_guidance_scale,
        understanding_image_size=args.understanding_image_size,
        plan={"auto": None, "layout": True, "direct": False}[args.route],
        strength=args.strength,
        checks=args.checks,
        **settings,
    )
    size = pipe.config.generation.image_size
    result = evaluate_edits(edit_fn, size, n=args.edits, seed=args.seed, splits=splits, level=args.level)
    print(format_edits(result))
    extra = {"image_guidance_scale": args.image_guidance_scale, "route": args.route, "strength": args.strength}
    extra["checks"] = args.checks
    write_json(args.json, result | {"settings": settings | extra})
    return 0


def cmd_geneval(args: argparse.Namespace) -> int:
    from harmon.eval.common import rank_and_world
    from harmon.eval.geneval import generate_geneval, read_prompts
    from harmon.world import format_tables
    from harmon.world.evaluate import score_shapes

    rank, world = rank_and_world()
    prompts = read_prompts(args.prompts, limit=args.limit)
    pipe = load_pipeline(args)
    model = args.model or args.checkpoint
    model = str(Path(model).resolve()) if model else "shipped shapes-world model"
    out = generate_geneval(
        pipe,
        prompts,
        args.outdir,
        n_samples=args.n,
        seed=args.seed,
        rank=rank,
        world_size=world,
        grid=not args.no_grid,
        extra_config={"model": model, "prompts_file": str(args.prompts)},
        compile=args.compile,
        **generation_settings(args),
    )
    tag = f"[rank {rank}/{world}] " if world > 1 else ""
    print(
        f"{tag}{args.outdir}: generated {len(out['generated'])} prompts x {args.n} images, "
        f"{len(out['skipped'])} already complete"
    )
    if args.score == "shapes":
        if world > 1:
            print(f"{tag}scoring skipped under torchrun: rerun in one process with --score shapes once all ranks end")
            return 0
        result = score_shapes(args.outdir, n_samples=args.n)
        print(format_tables(result))
        print(f"results: {Path(args.outdir) / 'results.json'}")
    return 0


@dataclass(frozen=True)
class AnswerSuite:
    """One answer-scoring benchmark as :func:`run_answer_suite` drives it.

    ``read(args)`` gives the items to ask; ``answer(pipe, items, max_new_tokens=)`` the model's answers, one per
    item; ``score(items, answers)`` the scores; ``table(scores)`` their printed table; ``write_answers(path,
    items, answers, scores)`` writes the answers in the benchmark's own format and returns where; ``summary(scores)``
    is what --json receives.
    """

    read: Callable[[argparse.Namespace], list]
    answer: Callable[..., list[str]]
    score: Callable[[Sequence, Sequence[str]], dict]
    table: Callable[[dict], str]
    write_answers: Callable[[str, Sequence, Sequence[str], dict], Path]
    summary: Callable[[dict], dict[str, Any]]


def run_answer_suite(args: argparse.Namespace, suite: AnswerSuite) -> int:
    """Read, check every image exists (before the model loads), answer, score, print, then write what was asked."""
    from harmon.eval.common import check_images

    items = suite.read(args)
    check_images(items)
    pipe = load_pipeline(args)
    answers = suite.answer(pipe, items, max_new_tokens=args.max_new_tokens)
    scores = suite.score(items, answers)
    print(suite.table(scores))
    if args.answers_out:
        print(f"answers: {suite.write_answers(args.answers_out, items, answers, scores)}")
    write_json(args.json, suite.summary(scores))
    return 0


def cmd_pope(args: argparse.Namespace) -> int:
    from harmon.eval.pope import answer_pope, format_pope, read_pope, score_pope, write_pope_answers
    from harmon.world.assets import SHAPES_POPE, shipped_question_files

    def read(args: argparse.Namespace) -> list:
        files = args.questions or shipped_question_files()
        images = args.images or (SHAPES_POPE / "images" if not args.questions else None)
        return [q for f in files for q in read_pope(f, images, limit=args.limit)]

    return run_answer_suite(
        args,
        AnswerSuite(
            read=read,
            answer=answer_pope,
            score=score_pope,
            table=format_pope,
            write_answers=lambda path, items, answers, _scores: write_pope_answers(path, items, answers),
            summary=lambda scores: {"kind": "pope", "splits": scores},
        ),
    )


def cmd_mme(args: argparse.Namespace) -> int:
    from harmon.eval.mme import answer_mme, format_mme, read_mme, score_mme, write_mme_answers
    from harmon.world.assets import SHAPES_MME

    return run_answer_suite(
        args,
        AnswerSuite(
            read=lambda args: read_mme(args.data or SHAPES_MME / "questions.jsonl", args.images, limit=args.limit),
            answer=answer_mme,
            score=score_mme,
            table=format_mme,
            write_answers=lambda path, items, answers, _scores: write_mme_answers(path, items, answers),
            summary=lambda scores: scores,
        ),
    )


def cmd_mc(args: argparse.Namespace) -> int:
    from harmon.eval.multiple_choice import answer_mc, expand, format_mc, read_mc, score_mc, write_mc_answers
    from harmon.world.assets import SHAPES_MC

    def read(args: argparse.Namespace) -> list:
        return expand(read_mc(args.data or SHAPES_MC, args.images, limit=args.limit), circular=args.circular)

    return run_answer_suite(
        args,
        AnswerSuite(
            read=read,
            answer=answer_mc,
            score=score_mc,
            table=format_mc,
            write_answers=write_mc_answers,
            summary=lambda scores: {k: v for k, v in scores.items() if k not in ("preds", "correct")},
        ),
    )


def _add_shapes(esub: argparse._SubParsersAction) -> None:
    es = esub.add_parser("shapes", help="fresh shapes-world prompts and questions, scored exactly")
    count = int_at_least(0, MAX_ITEMS)
    es.add_argument("--prompts", type=count, default=504, help="generation prompts (balanced over 6 categories)")
    es.add_argument("--questions", type=count, default=1512, help="questions (balanced over 7 kinds)")
    es.add_argument(
        "--shape-questions",
        type=count,
        default=168,
        help='bare-shape existence questions ("Is there a circle in the image?", half "No"), scored apart '
        "so the other tables do not depend on them; 0 skips them",
    )
    es.add_argument("--seed", type=seed_value, default=0)
    es.add_argument(
        "--fid",
        action="store_true",
        help="also the world's FID-style distance: the generated images vs renders of the same prompts, on the "
        "shipped VAE encoder's features (no download)",
    )
    es.add_argument(
        "--level",
        choices=["grid", "free", "all"],
        help="world v2's report instead: for each level, fresh prompts and questions in seen and in held-out "
        "phrasings (--prompts and --questions of each), seen and held-out pairs apart, chance levels beside "
        "position and binding; --shape-questions does not apply",
    )
    add_generation_args(es, image_size=False, plan=True)
    es.add_argument("--json", type=output_file, help="also write the full result here")
    add_model_args(es)
    es.set_defaults(func=cmd_shapes)


def _add_shapes_edit(esub: argparse._SubParsersAction) -> None:
    ee = esub.add_parser(
        "shapes-edit", help="fresh shapes-world edits (recolour, remove, add, move, swap colours, change shape), scored"
    )
    edits = int_at_least(1, MAX_ITEMS)
    ee.add_argument("--edits", type=edits, default=50, help="edits per edit type and phrasing split")
    ee.add_argument("--seed", type=seed_value, default=0)
    ee.add_argument(
        "--phrasing",
        choices=["seen", "held_out", "both"],
        default="both",
        help="instructions in the phrasings training uses, in the held-out ones, or both (one column each)",
    )
    ee.add_argument("--level", choices=["free", "grid"], default="free", help="the world v2 level of the scenes")
    ee.add_argument(
        "--image-guidance-scale",
        type=float,
        help="guidance towards the source image (>= 1; default 1: off); --guidance-scale guides towards the "
        "instruction",
    )
    ee.add_argument(
        "--understanding-image-size",
        type=int_at_least(16),
        help="pixels the encoder sees of the source (default: the model's)",
    )
    ee.add_argument(
        "--route",
        choices=("auto", "layout", "direct"),
        default="auto",
        help="as harmon edit's: layout (read, rewrite, redraw), direct, or auto (layout where the model records it)",
    )
    ee.add_argument("--strength", type=float, help="layout route: SDEdit strength (default: the model's)")
    ee.add_argument(
        "--checks", type=int, help="layout route: draws per edit, each read back by the model (default: the model's)"
    )
    add_generation_args(ee, image_size=False)
    ee.add_argument("--json", type=output_file, help="also write the full result here")
    add_model_args(ee)
    ee.set_defaults(func=cmd_shapes_edit)


def _add_geneval(esub: argparse._SubParsersAction) -> None:
    eg = esub.add_parser("geneval", help="images for GenEval prompts in GenEval's folder layout (torchrun-ready)")
    eg.add_argument(
        "--prompts",
        default=str(SHIPPED_GENEVAL_PROMPTS),
        help="evaluation_metadata.jsonl (default: the shipped shapes-world prompts)",
    )
    eg.add_argument(
        "--outdir",
        required=True,
        type=output_folder,
        help="output folder: <index:05d>/metadata.jsonl, samples/<k:05d>.png",
    )
    eg.add_argument("-n", type=int_at_least(1), default=4, help="images per prompt")
    eg.add_argument("--seed", type=seed_value, default=0, help="prompt i draws from a generator seeded by (seed, i)")
    eg.add_argument("--limit", type=int_at_least(1), help="only the first N prompts")
    eg.add_argument("--no-grid", action="store_true", help="skip grid.png")
    eg.add_argument(
        "--compile",
        action="store_true",
        help="generate with the diffusion head's MLP compiled "
        "(torch.compile): the same images, faster once compiled; pays on large models",
    )
    eg.add_argument("--score", choices=["shapes"], help="score the images with the shapes world's exact scorer")
    add_generation_args(eg, annealing=False)
    add_model_args(eg)
    eg.set_defaults(func=cmd_geneval)


def _add_answer_args(p: argparse.ArgumentParser, answers_help: str) -> None:
    p.add_argument("--max-new-tokens", type=int_at_least(1), help="answer length limit (default: the model's)")
    p.add_argument("--limit", type=int_at_least(1), help="only the first N items (a quick check)")
    p.add_argument("--answers-out", type=output_file, help=answers_help)
    p.add_argument("--json", type=output_file, help="also write the scores here")
    add_model_args(p)


def _add_answer_suites(esub: argparse._SubParsersAction) -> None:
    ep = esub.add_parser("pope", help="POPE yes/no object questions (POPE's JSON-lines files)")
    ep.add_argument("--questions", nargs="+", help="POPE files, one split each (default: the shipped shapes splits)")
    ep.add_argument("--images", help="folder of the images named in the files")
    _add_answer_args(ep, "write the answers here (JSON lines for POPE's evaluate.py and LLaVA's POPE scorer)")
    ep.set_defaults(func=cmd_pope)

    em = esub.add_parser("mme", help="MME-style paired yes/no questions per sub-task")
    em.add_argument(
        "--data",
        help="JSONL / TSV file, or a folder of <subtask>.txt or MME's release folder "
        "(default: the shipped shapes-world file)",
    )
    em.add_argument("--images", help="image folder (default: beside the data)")
    _add_answer_args(em, "write MME's eval_tool results folder (<subtask>.txt) here")
    em.set_defaults(func=cmd_mme)

    ec = esub.add_parser("mc", help="multiple choice: MMBench / SEED / MMMU-style TSV or JSONL")
    ec.add_argument("--data", help="TSV / JSONL file (default: the shipped shapes-world TSV)")
    ec.add_argument("--images", help="image folder for path-valued image fields (default: beside the data)")
    ec.add_argument(
        "--circular",
        action="store_true",
        help="MMBench's CircularEval: right only if every rotation of the options is answered right",
    )
    _add_answer_args(ec, "write the answers here (JSON lines)")
    ec.set_defaults(func=cmd_mc)


def add_eval(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "eval", help="evaluation: the shapes world, and GenEval / FID / POPE / MME / multiple-choice files"
    )
    esub = e.add_subparsers(dest="suite", required=True)
    _add_shapes(esub)
    _add_shapes_edit(esub)
    _add_geneval(esub)
    add_fid(esub)
    _add_answer_suites(esub)
