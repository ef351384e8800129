"""``harmon eval fid``: generate for an MJHQ-30K-style prompt file (resumable, split across torchrun ranks) and
score FID / KID against reference images with the FID Inception-v3, or score two folders made elsewhere."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

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


def _fid_generate(args: argparse.Namespace, rank: int, world: int) -> Path:
    """Generate the prompt file's images into --outdir (this rank's chunks); returns the images folder."""
    from harmon.eval.mjhq import generate_for_fid, prompts_fingerprint, read_fid_prompts

    prompts = read_fid_prompts(args.prompts, limit=args.limit)
    pipe = load_pipeline(args)
    model = args.model or args.checkpoint
    extra = {
        "model": str(Path(model).resolve()) if model else "shipped shapes-world model",
        "prompts_file": str(args.prompts),
        "prompts_sha256": prompts_fingerprint(args.prompts),
    }
    out = generate_for_fid(
        pipe,
        prompts,
        args.outdir,
        n_samples=args.n,
        batch_size=args.batch_size,
        seed=args.seed,
        rank=rank,
        world_size=world,
        extra_config=extra,
        compile=args.compile,
        **generation_settings(args),
    )
    tag = f"[rank {rank}/{world}] " if world > 1 else ""
    print(
        f"{tag}{args.outdir}: generated {len(out['generated'])} prompts x {args.n} images, "
        f"{len(out['skipped'])} already complete"
    )
    return Path(args.outdir) / "images"


def _fid_score(args: argparse.Namespace, images: Path) -> dict:
    """FID / KID of the images folder against --reference, printed as a table."""
    from harmon.eval.fid import compare_sets, folder_features, format_fid_table, reference_set
    from harmon.eval.inception import FEATURE_DIM, load_fid_inception
    from harmon.loading import default_device

    model = load_fid_inception(args.inception, device=args.device or default_device())
    batch = args.inception_batch_size
    ref = reference_set(args.reference, model, args.resize, batch, args.save_reference_stats, args.workers)
    gen = folder_features(images, model, args.resize, batch, args.workers)
    if args.save_stats:
        gen.save(args.save_stats)
    result = compare_sets(gen, ref, args.kid_subsets, args.kid_subset_size, seed=args.seed)
    result.update(
        images=str(images),
        reference=str(args.reference),
        inception_sha256=model.sha256,
        standard_weights=model.standard,
    )
    weights = "" if model.standard else ", NON-STANDARD weights: not comparable with published FIDs"
    print(f"FID / KID (Inception-v3 pool3, {args.resize} resize{weights}): {images} vs {args.reference}")
    print(format_fid_table(result))
    if min(gen.n, ref.n) < FEATURE_DIM:
        print(
            f"note: fewer than {FEATURE_DIM} images on a side: FID is biased upwards at this size (compare only "
            "runs of equal size); KID is unbiased"
        )
    return result


def cmd_fid(args: argparse.Namespace) -> int:
    from harmon.eval.common import rank_and_world
    from harmon.eval.inception import weights_help
    from harmon.validate import check_number

    lows = {
        "-n": (args.n, 1),
        "--batch-size": (args.batch_size, 1),
        "--inception-batch-size": (args.inception_batch_size, 1),
        "--workers": (args.workers, 0),
        "--kid-subsets": (args.kid_subsets, 1),
        "--kid-subset-size": (args.kid_subset_size, 2),
    }
    for name, (value, low) in lows.items():
        check_number(name, value, low=low, integer=True)
    if bool(args.prompts) == bool(args.images):
        raise ValueError("give --prompts FILE --outdir DIR to generate, or --images DIR to score images made elsewhere")
    if args.prompts and not args.outdir:
        raise ValueError("--prompts needs --outdir (where the images go)")
    if args.images and not args.reference:
        raise ValueError("--images needs --reference (a folder of images or a statistics .npz) to score against")
    if args.reference and not args.inception:
        raise ValueError(f"scoring needs --inception PATH (or $HARMON_FID_INCEPTION): {weights_help()}")
    for path in (args.inception if args.reference else None, args.reference):
        if path and not Path(path).exists():
            raise FileNotFoundError(
                f"no such file or folder: {path}" + (f"; {weights_help()}" if path == args.inception else "")
            )
    rank, world = rank_and_world()
    images = _fid_generate(args, rank, world) if args.prompts else Path(args.images)
    if not args.reference:
        return 0
    if world > 1:
        print(f"[rank {rank}/{world}] scoring skipped under torchrun: once all ranks end, score in one process")
        return 0
    result = _fid_score(args, images)
    json_path = args.json or (str(Path(args.outdir) / "fid_results.json") if args.prompts else None)
    write_json(json_path, result)
    if json_path:
        print(f"results: {json_path}")
    return 0


def add_fid(esub: argparse._SubParsersAction) -> None:
    ef = esub.add_parser(
        "fid",
        help="FID / KID against reference images (MJHQ-30K style): generate for a prompt file (torchrun-ready), "
        "or score a folder made elsewhere",
    )
    ef.add_argument("--prompts", help="MJHQ-30K meta_data.json (id -> prompt, category) or JSON lines with 'prompt'")
    ef.add_argument("--outdir", type=output_folder, help="where generated images go: images/<category>/<id>.png")
    ef.add_argument("--images", help="score this folder of images instead of generating (categories: sub-folders)")
    ef.add_argument("--reference", help="reference images folder (e.g. mjhq30k_imgs) or a statistics .npz")
    ef.add_argument(
        "--inception",
        default=os.environ.get("HARMON_FID_INCEPTION"),
        help="FID Inception weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
        "(default: $HARMON_FID_INCEPTION)",
    )
    ef.add_argument(
        "--resize",
        choices=["clean", "legacy"],
        default="clean",
        help="clean: clean-fid's PIL bicubic (default); legacy: pytorch-fid's torch bilinear",
    )
    ef.add_argument(
        "--save-reference-stats", type=output_file, help="write the reference folder's statistics here (.npz), to reuse"
    )
    ef.add_argument("--save-stats", type=output_file, help="write the scored images' statistics here (.npz)")
    ef.add_argument(
        "--json", type=output_file, help="write the results here (default with --prompts: OUTDIR/fid_results.json)"
    )
    ef.add_argument("-n", type=int_at_least(1), default=1, help="images per prompt (MJHQ-30K: 1)")
    ef.add_argument(
        "--batch-size", type=int_at_least(1), default=1, help="prompts per generate call; the images depend on it"
    )
    ef.add_argument("--seed", type=seed_value, default=0, help="generation seed; also KID's subset draws")
    ef.add_argument("--limit", type=int_at_least(1), help="only the first N prompts")
    ef.add_argument("--compile", action="store_true", help="generate with the diffusion head's MLP compiled")
    ef.add_argument("--inception-batch-size", type=int_at_least(1), default=50, help="images per Inception forward")
    ef.add_argument(
        "--workers",
        type=int_at_least(0),
        default=min(8, os.cpu_count() or 1),
        help="processes that read and resize images for Inception (default: min(8, CPU cores))",
    )
    ef.add_argument("--kid-subsets", type=int_at_least(1), default=100, help="KID: number of random subsets")
    ef.add_argument("--kid-subset-size", type=int_at_least(2), default=1000, help="KID: images per side in a subset")
    add_generation_args(ef, annealing=False)
    add_model_args(ef)
    ef.set_defaults(func=cmd_fid)
