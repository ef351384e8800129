"""``harmon train`` / ``torchrun -m harmon.cli train``: run a recipe (or a saved config) with overrides."""

from __future__ import annotations

import argparse
import json
import logging
import os


def find_recipe(name: str):
    """The ``TrainConfig`` of the recipe called ``name``: a generic recipe or one of the shapes world's; the one
    place the CLI looks recipes up."""
    from harmon.train.recipes import RECIPES
    from harmon.world.recipes import RECIPES as WORLD_RECIPES
    from harmon.world.recipes_plan import PLAN_RECIPES
    from harmon.world.recipes_studies import STUDY_RECIPES
    from harmon.world.recipes_v2 import RECIPES_V2

    table = {**RECIPES, **WORLD_RECIPES, **PLAN_RECIPES, **STUDY_RECIPES, **RECIPES_V2}
    if name not in table:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(sorted(table))}")
    return table[name]()


def resolve_config(args: argparse.Namespace):
    """The run's ``TrainConfig``: the recipe or config file, with the --set overrides applied, validated."""
    import harmon.world  # noqa: F401  (registers the world's size, data format and eval for saved configs too)
    from harmon.train.config import TrainConfig, apply_overrides
    from harmon.validate import read_json_object

    if args.recipe:
        base = find_recipe(args.recipe)
    else:
        try:
            base = TrainConfig.from_dict(read_json_object(args.config, "training config"))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{args.config}: {err}" if args.config not in str(err) else str(err)) from None
    cfg = apply_overrides(base, args.overrides)
    cfg.validate()
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    # under torchrun every rank runs this; only rank 0 logs progress
    logging.getLogger().setLevel(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
    cfg = resolve_config(args)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from harmon.train.parallel import shutdown_distributed
    from harmon.train.trainer import Trainer

    Trainer(cfg, device=args.device).run(resume=args.resume)
    shutdown_distributed(0)
    return 0


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train with a recipe (see `harmon train --help`)", description="Train Harmon with a recipe."
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--recipe",
        help="stage1 | stage2 | stage3 | finetune_decoder | shapes_lm | shapes_stage1..3 | shapes_v2_lm | "
        "shapes_v2_stage1..3",
    )
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
    p.set_defaults(func=cmd_train)
