"""``harmon analyze synergy`` and ``harmon analyze reca``: studies that train several runs and score them."""

from __future__ import annotations

import argparse
from pathlib import Path

from harmon.cli.common import command_line, generation_settings, int_at_least, output_folder, seed_value

# harmon.world.analyses.reca.ARMS; torch loads only inside commands
RECA_ARMS = ("base", "reca", "reca_low", "reca_t2i", "t2i")


def cmd_synergy(args: argparse.Namespace) -> int:
    from harmon.world.analyses.synergy import format_synergy_table, run_synergy

    study = run_synergy(
        args.base,
        args.outdir,
        seeds=tuple(range(args.seeds)),
        steps=args.steps,
        n_prompts=args.prompts,
        eval_seed=args.eval_seed,
        device=args.device or "cpu",
        t2i_batch=args.t2i_batch,
        und_batch=args.und_batch,
        lr=args.lr,
        command=command_line(None),
        **generation_settings(args),  # the sampling flags synergy takes: --num-iter ... --x0-clip
    )
    print(format_synergy_table(study))
    print(
        f"{study['steps']} steps per run from {study['base']}; {study['n_prompts']} prompts, eval seed "
        f"{study['eval_seed']}; results in {Path(args.outdir) / 'synergy.json'}"
    )
    return 0


def cmd_reca(args: argparse.Namespace) -> int:
    from harmon.world.analyses.reca import format_reca_table, run_reca_study

    study = run_reca_study(
        args.base,
        args.outdir,
        seeds=tuple(range(args.seeds)),
        steps=args.steps,
        lr=args.lr,
        batch=args.batch,
        n_prompts=args.prompts,
        n_questions=args.questions,
        prompt_seed=args.prompt_seed,
        arms=tuple(args.arms),
        device=args.device or "cpu",
        command=command_line(None),
        **generation_settings(args),
    )
    print(format_reca_table(study))
    print(
        f"{study['steps']} steps per run from {study['base']}; {study['n_prompts']} prompts and "
        f"{study['n_questions']} questions, prompt seed {study['prompt_seed']}; results in "
        f"{Path(args.outdir) / 'reca.json'}"
    )
    return 0


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-iter", type=int_at_least(1))
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--diffusion-steps")
    p.add_argument("--x0-clip", type=float)
    p.add_argument("--device")


def _add_reca(asub: argparse._SubParsersAction) -> None:
    r = asub.add_parser("reca", help="reconstruction alignment (RecA) on the shapes world: base vs RecA, seeds")
    r.add_argument("--base", required=True, help="model folder every run starts from (e.g. the shipped model)")
    r.add_argument("--outdir", required=True, type=output_folder, help="runs and reca.json (a study resumes)")
    r.add_argument("--seeds", type=int_at_least(1), default=3)
    r.add_argument("--arms", nargs="+", choices=RECA_ARMS, default=list(RECA_ARMS))
    r.add_argument("--steps", type=int_at_least(1), default=300, help="optimizer steps per RecA run")
    r.add_argument("--lr", type=float, default=1e-4)
    r.add_argument("--batch", type=int_at_least(1), default=16, help="samples per source per step")
    r.add_argument("--prompts", type=int_at_least(1), default=240, help="fresh GenEval-style prompts per model")
    r.add_argument("--questions", type=int_at_least(0), default=280, help="fresh questions per model (0: none)")
    r.add_argument("--prompt-seed", type=seed_value, default=0)
    _sampling_flags(r)
    r.set_defaults(func=cmd_reca)


def add_studies(asub: argparse._SubParsersAction) -> None:
    """The study subcommands of ``harmon analyze``."""
    _add_synergy(asub)
    _add_reca(asub)


def _add_synergy(asub: argparse._SubParsersAction) -> None:
    sy = asub.add_parser("synergy", help="same steps, text-to-image only vs + understanding data, several seeds")
    sy.add_argument("--base", required=True, help="model folder every run starts from (e.g. a stage-I export)")
    sy.add_argument(
        "--outdir",
        required=True,
        type=output_folder,
        help="runs and synergy.json go here (an interrupted study resumes)",
    )
    sy.add_argument("--seeds", type=int_at_least(1), default=3)
    sy.add_argument("--steps", type=int_at_least(1), default=500, help="optimizer steps per run")
    sy.add_argument("--prompts", type=int_at_least(1), default=120, help="fresh GenEval-style prompts per scored model")
    sy.add_argument("--eval-seed", type=seed_value, default=0)
    sy.add_argument("--t2i-batch", type=int_at_least(1), default=32)
    sy.add_argument(
        "--und-batch", type=int_at_least(1), default=8, help="question-answering conversations per step (joint arm)"
    )
    sy.add_argument("--lr", type=float, default=3e-4)
    _sampling_flags(sy)
    sy.set_defaults(func=cmd_synergy)
