"""``harmon train`` / ``torchrun -m harmon.train``: run a recipe with overrides."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harmon train", description="Train Harmon with a recipe.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--recipe", help="stage1 | stage2 | stage3 | finetune_decoder | shapes_lm | shapes_stage1..3")
    src.add_argument("--config", help="a TrainConfig JSON (e.g. the config.json a run wrote next to its checkpoints)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, dotted (optim.lr=3e-4, data.0.path=/data/x.tar, max_steps=10)",
    )
    p.add_argument("--resume", default="auto", help="auto (latest checkpoint in output_dir) | none | a checkpoint path")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    from harmon.train.config import TrainConfig, apply_overrides
    from harmon.train.recipes import get_recipe
    from harmon.world.recipes import RECIPES as WORLD_RECIPES  # importing the world registers its format and eval

    try:
        if args.recipe in WORLD_RECIPES:
            base = WORLD_RECIPES[args.recipe]()
        else:
            base = (
                get_recipe(args.recipe)
                if args.recipe
                else TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
            )
        cfg = apply_overrides(base, args.overrides)
        cfg.validate()
    except ValueError as err:
        print(f"harmon train: error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from harmon.train.parallel import shutdown_distributed
    from harmon.train.trainer import Trainer

    Trainer(cfg, device=args.device).run(resume=args.resume)
    shutdown_distributed(0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
