"""The ``harmon`` command: generate, describe, convert (and, when installed, train / eval)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: everything we load is local

import torch

from harmon.sampling import PRESETS

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (default: the shipped tiny shapes-world model)")
    g.add_argument("--model", help="folder saved by save_pretrained / `harmon convert`")
    g.add_argument("--checkpoint", help="official harmon_*.pth (with --vae and --llm)")
    g.add_argument("--vae", help="official kl16.ckpt")
    g.add_argument("--llm", help="local Qwen2.5-Instruct folder (config + tokenizer)")
    g.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: best available)")
    g.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on CUDA, fp32 elsewhere")


def load_pipeline(args: argparse.Namespace):
    from harmon.pipeline import HarmonPipeline

    dtype = DTYPES[args.dtype] if args.dtype else None
    if args.checkpoint or args.vae or args.llm:
        missing = [n for n in ("checkpoint", "vae", "llm") if not getattr(args, n)]
        if missing:
            raise SystemExit(f"official weights need --checkpoint, --vae and --llm; missing: {', '.join(missing)}")
        return HarmonPipeline.from_official(args.checkpoint, args.vae, args.llm, device=args.device, dtype=dtype)
    if args.model:
        return HarmonPipeline.from_pretrained(args.model, device=args.device, dtype=dtype)
    from harmon.shipped import shipped_model_path

    path = shipped_model_path()
    if path is None:
        raise SystemExit("no shipped model is installed in this copy of harmon; pass --model or official weights")
    return HarmonPipeline.from_pretrained(path, device=args.device, dtype=dtype)


def cmd_generate(args: argparse.Namespace) -> int:
    pipe = load_pipeline(args)
    generator = torch.Generator().manual_seed(args.seed)
    images = pipe.generate(
        args.prompt,
        num_images_per_prompt=args.num_images,
        image_size=args.image_size,
        num_iter=args.num_iter,
        guidance_scale=args.guidance_scale,
        cfg_schedule=args.cfg_schedule,
        temperature=args.temperature,
        num_sampling_steps=args.diffusion_steps,
        x0_clip=args.x0_clip,
        diffusion_steps_final=args.diffusion_steps_final,
        preset=args.preset,
        generator=generator,
        compile=args.compile,
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(images) == 1:
        images[0].save(out)
        print(out)
        return 0
    stem, suffix = out.stem, out.suffix or ".png"
    for i, im in enumerate(images):
        path = out.with_name(f"{stem}_{i:02d}{suffix}")
        im.save(path)
        print(path)
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    pipe = load_pipeline(args)
    generator = torch.Generator().manual_seed(args.seed)
    answer = pipe.describe(
        args.image,
        args.question,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        generator=generator,
        image_size=args.image_size,
    )
    print(answer)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    pipe = load_pipeline(args)
    dtype = DTYPES[args.save_dtype] if args.save_dtype else None
    pipe.save_pretrained(args.output, dtype=dtype)
    print(args.output)
    return 0


def cmd_eval_shapes(args: argparse.Namespace) -> int:
    import json

    from harmon.world import format_tables
    from harmon.world.evaluate import evaluate_shapes

    pipe = load_pipeline(args)
    settings = {
        k: v
        for k, v in dict(
            num_iter=args.num_iter,
            guidance_scale=args.guidance_scale,
            temperature=args.temperature,
            num_sampling_steps=args.diffusion_steps,
            cfg_schedule=args.cfg_schedule,
            x0_clip=args.x0_clip,
            diffusion_steps_final=args.diffusion_steps_final,
            preset=args.preset,
        ).items()
        if v is not None
    }
    result = evaluate_shapes(
        pipe,
        n_prompts=args.prompts,
        n_questions=args.questions,
        seed=args.seed,
        n_shape_questions=args.shape_questions,
        **settings,
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
    for k in ("generation_seconds", "understanding_seconds"):
        if k in result:
            print(f"{k.replace('_', ' ')}: {result[k]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


def _settings(args: argparse.Namespace) -> dict:
    return {
        "image_size": args.image_size,
        "num_iter": args.num_iter,
        "guidance_scale": args.guidance_scale,
        "cfg_schedule": args.cfg_schedule,
        "temperature": args.temperature,
        "num_sampling_steps": args.diffusion_steps,
    }


def _write_json(path: str | None, result: dict) -> None:
    if path:
        import json

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n")


def cmd_eval_geneval(args: argparse.Namespace) -> int:
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
        extra_config={"model": str(model), "prompts_file": str(args.prompts)},
        compile=args.compile,
        **_settings(args),
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


def cmd_eval_pope(args: argparse.Namespace) -> int:
    from harmon.eval.common import check_images
    from harmon.eval.pope import answer_pope, format_pope, read_pope, score_pope, write_pope_answers
    from harmon.world.assets import SHAPES_POPE, shipped_question_files

    files = args.questions or shipped_question_files()
    images = args.images or (SHAPES_POPE / "images" if not args.questions else None)
    questions = [q for f in files for q in read_pope(f, images, limit=args.limit)]
    check_images(questions)
    pipe = load_pipeline(args)
    answers = answer_pope(pipe, questions, max_new_tokens=args.max_new_tokens)
    scores = score_pope(questions, answers)
    print(format_pope(scores))
    if args.answers_out:
        print(f"answers: {write_pope_answers(args.answers_out, questions, answers)}")
    _write_json(args.json, {"kind": "pope", "splits": scores})
    return 0


def cmd_eval_mme(args: argparse.Namespace) -> int:
    from harmon.eval.common import check_images
    from harmon.eval.mme import answer_mme, format_mme, read_mme, score_mme, write_mme_answers
    from harmon.world.assets import SHAPES_MME

    items = read_mme(args.data or SHAPES_MME / "questions.jsonl", args.images, limit=args.limit)
    check_images(items)
    pipe = load_pipeline(args)
    answers = answer_mme(pipe, items, max_new_tokens=args.max_new_tokens)
    scores = score_mme(items, answers)
    print(format_mme(scores))
    if args.answers_out:
        print(f"answers: {write_mme_answers(args.answers_out, items, answers)}")
    _write_json(args.json, scores)
    return 0


def cmd_eval_mc(args: argparse.Namespace) -> int:
    from harmon.eval.common import check_images
    from harmon.eval.multiple_choice import answer_mc, expand, format_mc, read_mc, score_mc, write_mc_answers
    from harmon.world.assets import SHAPES_MC

    asked = expand(read_mc(args.data or SHAPES_MC, args.images, limit=args.limit), circular=args.circular)
    check_images(asked)
    pipe = load_pipeline(args)
    answers = answer_mc(pipe, asked, max_new_tokens=args.max_new_tokens)
    scores = score_mc(asked, answers)
    print(format_mc(scores))
    if args.answers_out:
        print(f"answers: {write_mc_answers(args.answers_out, asked, answers, scores)}")
    _write_json(args.json, {k: v for k, v in scores.items() if k not in ("preds", "correct")})
    return 0


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-size", type=int, help="pixels, a multiple of 16 (default: the model's)")
    p.add_argument("--num-iter", type=int, help="masked-autoregressive steps")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance (>= 1)")
    p.add_argument("--cfg-schedule", choices=["constant", "linear"])
    p.add_argument("--temperature", type=float)
    p.add_argument("--diffusion-steps", help='diffusion sampling steps, e.g. "100" or "50,20"')


def _add_answer_args(p: argparse.ArgumentParser, answers_help: str) -> None:
    p.add_argument("--max-new-tokens", type=int, help="answer length limit (default: the model's)")
    p.add_argument("--limit", type=int, help="only the first N items (a quick check)")
    p.add_argument("--answers-out", help=answers_help)
    p.add_argument("--json", help="also write the scores here")


def cmd_gradcam(args: argparse.Namespace) -> int:
    from harmon.analyze.gradcam import gradcam_plus_plus, integrated_gradients, overlay
    from harmon.images import load_image

    pipe = load_pipeline(args)
    image = load_image(args.image)
    probe_flags = [f for f in ("positives", "negatives", "probe", "save_probe") if getattr(args, f)]
    if args.target == "answer" and probe_flags:
        raise SystemExit(f"error: --{probe_flags[0].replace('_', '-')} belongs to --target probe, not --target answer")
    probe = _concept_probe(pipe, args) if args.target == "probe" else None
    if probe is not None:
        print(f"probe: {probe}")
    method = gradcam_plus_plus if args.method == "gradcam++" else integrated_gradients
    cam = method(pipe, image, args.concept, question=args.question, upsample=args.upsample, probe=probe)
    overlay(image, cam).save(args.output)
    print(args.output)
    return 0


def _concept_probe(pipe, args: argparse.Namespace):
    """The concept probe of ``harmon analyze gradcam --target probe``: fitted on the caller's image folders, or on
    shapes-world scenes when the concept is a word of that world, or read from --probe."""
    from harmon.analyze.gradcam import ConceptProbe

    if args.question:
        raise SystemExit("error: --question is asked of the LLM: use it with --target answer")
    if args.probe:
        if args.positives or args.negatives:
            raise SystemExit("error: --probe loads a fitted probe; --positives/--negatives fit a new one (not both)")
        try:
            return ConceptProbe.load(args.probe)
        except (OSError, ValueError) as err:
            raise SystemExit(f"error: {err}") from err
    probe = _fit_concept_probe(pipe, args)
    if args.save_probe:
        probe.save(args.save_probe)
        print(f"probe saved: {args.save_probe}")
    return probe


def _fit_concept_probe(pipe, args: argparse.Namespace):
    from harmon.analyze.gradcam import ConceptProbe
    from harmon.eval.mme import IMAGE_SUFFIXES
    from harmon.world.analyses.localisation import world_probe

    if bool(args.positives) != bool(args.negatives):
        raise SystemExit("error: --positives and --negatives go together (images with and without the concept)")
    if args.positives:
        images, labels = [], []
        for folder, label in ((args.positives, True), (args.negatives, False)):
            path = Path(folder)
            if not path.is_dir():
                raise SystemExit(f"error: not a folder: {path}")
            files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise SystemExit(f"error: no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
            images += files
            labels += [label] * len(files)
        return ConceptProbe.fit(pipe, images, labels, args.concept, generator=torch.Generator().manual_seed(args.seed))
    try:
        return world_probe(pipe, args.concept, scenes=args.probe_scenes, seed=args.seed)
    except ValueError as err:
        raise SystemExit(
            f"error: {err}. For other concepts give --positives DIR --negatives DIR (images with and "
            "without it), or use --target answer"
        ) from err


def cmd_localisation(args: argparse.Namespace) -> int:
    import json
    import time

    from harmon.world.analyses.localisation import (
        demo_figure,
        encoder_locality,
        format_localisation_table,
        localisation,
        world_probe,
    )

    t0 = time.perf_counter()
    pipe = load_pipeline(args)
    probes = {}
    if "probe" in args.targets:
        from harmon.world import WorldConfig

        shapes = WorldConfig(image_size=pipe.config.generation.understanding_image_size).shapes
        probes = {s: world_probe(pipe, s, scenes=args.probe_scenes, seed=args.probe_seed) for s in shapes}
    rows = [
        localisation(
            pipe,
            method,
            target,
            scenes=args.scenes,
            seed=args.seed,
            probe_scenes=args.probe_scenes,
            probe_seed=args.probe_seed,
            probes=probes,
        )
        for method in args.methods
        for target in args.targets
    ]
    print(
        f"heat inside the asked shape's boxes, {args.scenes} scenes (seed {args.seed}), {rows[0]['cases']} cases; "
        f"a flat map scores the boxes' share, {rows[0]['boxes_share']:.3f}"
    )
    print(format_localisation_table(rows))
    if probes:
        print(
            "probe held-out accuracy: "
            + ", ".join(f"{k} {v.accuracy:.3f}" for k, v in probes.items())
            + f" ({args.probe_scenes} scenes, seed {args.probe_seed})"
        )
    answered = [r["answered_yes"] for r in rows if "answered_yes" in r]
    if answered:
        print(
            f'the model answered "Yes" to "Is there a <shape> in the image?" in {answered[0]:.0%} of the cases '
            "(the shape is always there)"
        )
    result = {
        "rows": rows,
        "model": args.model or "shipped shapes model",
        "command": "harmon " + " ".join(sys.argv[1:])
        if sys.argv[1:2] == ["analyze"]
        else "harmon analyze localisation",
    }
    if args.locality:
        loc = encoder_locality(pipe, scenes=args.scenes, seed=args.seed)
        print(
            f"encoder rows: d(row i)/d(token i) is {loc['own_vs_other']:.1f}x d(row i)/d(token j), j != i "
            f"(mean Jacobian norms, {args.scenes} scenes)"
        )
        result["encoder_locality"] = loc
    if args.figure:
        if not probes:
            raise SystemExit("error: --figure shows the probe's maps beside the answer's: keep 'probe' in --targets")
        demo_figure(pipe, probes).save(args.figure)
        result["figure"] = str(args.figure)
        print(f"figure: {args.figure}")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    import json

    from harmon.world.analyses.probe import format_probe_table, run_probes

    pipe = load_pipeline(args)
    result = run_probes(pipe, n_train=args.train, n_test=args.test, seeds=tuple(range(args.seeds)))
    result["model"] = args.model or "shipped shapes model"
    result["command"] = "harmon " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["analyze"] else "harmon analyze probe"
    print(format_probe_table(result))
    print(
        f"seeds {result['seeds']}, {result['n_train']} train / {result['n_test']} test scenes, "
        f"{result['seconds']:.0f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_synergy(args: argparse.Namespace) -> int:
    from harmon.world.analyses.synergy import format_synergy_table, run_synergy

    settings = {
        k: v
        for k, v in (
            ("num_iter", args.num_iter),
            ("guidance_scale", args.guidance_scale),
            ("num_sampling_steps", args.diffusion_steps),
            ("x0_clip", args.x0_clip),
        )
        if v is not None
    }
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
        command="harmon " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["analyze"] else None,
        **settings,
    )
    print(format_synergy_table(study))
    print(
        f"{study['steps']} steps per run from {study['base']}; {study['n_prompts']} prompts, eval seed "
        f"{study['eval_seed']}; results in {Path(args.outdir) / 'synergy.json'}"
    )
    return 0


def cmd_context(args: argparse.Namespace) -> int:
    from harmon.world.analyses.context import context_curve

    c = context_curve(load_pipeline(args), n_images=args.images, repeats=args.repeats)
    print("| visible tokens | " + " | ".join(str(v) for v in c["visible"]) + " |")
    print("|---" * (len(c["visible"]) + 1) + "|")
    print("| loss | " + " | ".join(f"{x:.4f}" for x in c["loss"]) + " |")
    print(f"loss with every prompt swapped for another image's (0 visible): {c['shuffled_text_loss']:.4f}")
    return 0


def cmd_words(args: argparse.Namespace) -> int:
    from harmon.world.analyses.words import (
        colour_latent_distances,
        format_distance_table,
        format_word_table,
        word_binding,
    )

    pipe = load_pipeline(args)
    result = word_binding(pipe, attribute=args.attribute, n_scenes=args.scenes, repeats=args.repeats, seed=args.seed)
    print(format_word_table(result))
    if args.attribute == "color":
        distances = colour_latent_distances(pipe, seed=args.seed)
        print("\n" + format_distance_table(distances))
        result["latent_distance"] = distances
    _write_json(args.json, result)
    return 0


def cmd_drawn(args: argparse.Namespace) -> int:
    from harmon.world.analyses.words import drawn_attributes, format_drawn_table

    result = drawn_attributes(
        load_pipeline(args),
        attribute=args.attribute,
        images=args.images,
        seed=args.seed,
        preset=args.preset,
        guidance_scale=args.guidance_scale,
    )
    print(format_drawn_table(result))
    _write_json(args.json, result)
    return 0


def cmd_codec(args: argparse.Namespace) -> int:
    from harmon.world.analyses.codec import StandaloneVAE, codec_round_trip, format_codec_table

    source = StandaloneVAE(args.stage0_vae) if args.stage0_vae else load_pipeline(args)
    result = codec_round_trip(source, scenes=args.scenes, seed=args.seed)
    print(format_codec_table(result))
    _write_json(args.json, result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harmon", description="Harmon: one shared encoder for image understanding and generation."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train with a recipe (see `harmon train --help`)", add_help=False)

    g = sub.add_parser("generate", help="text -> image")
    g.add_argument("prompt", nargs="+", help="one or more prompts")
    g.add_argument("-o", "--output", default="out.png", help="PNG path (numbered when several images)")
    g.add_argument("-n", "--num-images", type=int, default=1, help="images per prompt")
    g.add_argument("--image-size", type=int, help="pixels, a multiple of 16 (default: the model's)")
    g.add_argument("--num-iter", type=int, help="masked-autoregressive steps")
    g.add_argument("--guidance-scale", type=float, help="classifier-free guidance (>= 1)")
    g.add_argument("--cfg-schedule", choices=["constant", "linear"])
    g.add_argument("--temperature", type=float)
    g.add_argument("--diffusion-steps", help='diffusion sampling steps, e.g. "100" or "50,20"')
    g.add_argument("--x0-clip", type=float, help="clamp the predicted clean latent token (default: the model's)")
    g.add_argument(
        "--diffusion-steps-final",
        type=int,
        help="annealed diffusion steps: the last MAR step uses "
        "this many, the first --diffusion-steps, linear in between",
    )
    g.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="speed preset applied to the model's "
        "defaults (explicit settings win); quality/speed table in benchmarks/README.md",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="run the diffusion head's MLP through torch.compile: "
        "the same images, faster once compiled (the compilation takes tens of seconds, so it pays for "
        "large models or many images; on CPU it needs a C++ compiler)",
    )
    g.add_argument("--seed", type=int, default=0)
    _add_model_args(g)
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("describe", help="image + question -> text")
    d.add_argument("image")
    d.add_argument("question", nargs="?", default="Describe the image in detail.")
    d.add_argument("--max-new-tokens", type=int)
    d.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    d.add_argument("--temperature", type=float, default=1.0)
    d.add_argument("--image-size", type=int)
    d.add_argument("--seed", type=int, default=0)
    _add_model_args(d)
    d.set_defaults(func=cmd_describe)

    e = sub.add_parser("eval", help="evaluation: the shapes world, and GenEval / POPE / MME / multiple-choice files")
    esub = e.add_subparsers(dest="suite", required=True)
    es = esub.add_parser("shapes", help="fresh shapes-world prompts and questions, scored exactly")
    es.add_argument("--prompts", type=int, default=504, help="generation prompts (balanced over 6 categories)")
    es.add_argument("--questions", type=int, default=1512, help="questions (balanced over 7 kinds)")
    es.add_argument(
        "--shape-questions",
        type=int,
        default=168,
        help='bare-shape existence questions ("Is there a circle in the image?", half "No"), scored apart '
        "so the other tables do not depend on them; 0 skips them",
    )
    es.add_argument("--seed", type=int, default=0)
    es.add_argument("--num-iter", type=int)
    es.add_argument("--guidance-scale", type=float)
    es.add_argument("--cfg-schedule", choices=["constant", "linear"])
    es.add_argument("--temperature", type=float)
    es.add_argument("--diffusion-steps")
    es.add_argument("--x0-clip", type=float)
    es.add_argument(
        "--diffusion-steps-final",
        type=int,
        help="annealed diffusion steps: the last MAR step uses "
        "this many, the first --diffusion-steps, linear in between",
    )
    es.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="speed preset applied to the model's "
        "defaults (explicit settings win); quality/speed table in benchmarks/README.md",
    )
    es.add_argument("--json", help="also write the full result here")
    _add_model_args(es)
    es.set_defaults(func=cmd_eval_shapes)

    eg = esub.add_parser("geneval", help="images for GenEval prompts in GenEval's folder layout (torchrun-ready)")
    eg.add_argument(
        "--prompts",
        default=str(Path(__file__).parent / "assets" / "eval" / "shapes_geneval_metadata.jsonl"),
        help="evaluation_metadata.jsonl (default: the shipped shapes-world prompts)",
    )
    eg.add_argument("--outdir", required=True, help="output folder: <index:05d>/metadata.jsonl, samples/<k:05d>.png")
    eg.add_argument("-n", type=int, default=4, help="images per prompt")
    eg.add_argument("--seed", type=int, default=0, help="prompt i draws from a generator seeded by (seed, i)")
    eg.add_argument("--limit", type=int, help="only the first N prompts")
    eg.add_argument("--no-grid", action="store_true", help="skip grid.png")
    eg.add_argument(
        "--compile",
        action="store_true",
        help="generate with the diffusion head's MLP compiled "
        "(torch.compile): the same images, faster once compiled; pays on large models",
    )
    eg.add_argument("--score", choices=["shapes"], help="score the images with the shapes world's exact scorer")
    _add_generation_args(eg)
    _add_model_args(eg)
    eg.set_defaults(func=cmd_eval_geneval)

    ep = esub.add_parser("pope", help="POPE yes/no object questions (POPE's JSON-lines files)")
    ep.add_argument("--questions", nargs="+", help="POPE files, one split each (default: the shipped shapes splits)")
    ep.add_argument("--images", help="folder of the images named in the files")
    _add_answer_args(ep, "write the answers here (POPE's answer JSON lines)")
    _add_model_args(ep)
    ep.set_defaults(func=cmd_eval_pope)

    em = esub.add_parser("mme", help="MME-style paired yes/no questions per sub-task")
    em.add_argument(
        "--data",
        help="JSONL / TSV file, or a folder of <subtask>.txt or MME's release folder "
        "(default: the shipped shapes-world file)",
    )
    em.add_argument("--images", help="image folder (default: beside the data)")
    _add_answer_args(em, "write MME's eval_tool results folder (<subtask>.txt) here")
    em.set_defaults(func=cmd_eval_mme)
    _add_model_args(em)

    ec = esub.add_parser("mc", help="multiple choice: MMBench / SEED / MMMU-style TSV or JSONL")
    ec.add_argument("--data", help="TSV / JSONL file (default: the shipped shapes-world TSV)")
    ec.add_argument("--images", help="image folder for path-valued image fields (default: beside the data)")
    ec.add_argument(
        "--circular",
        action="store_true",
        help="MMBench's CircularEval: right only if every rotation of the options is answered right",
    )
    _add_answer_args(ec, "write the answers here (JSON lines)")
    _add_model_args(ec)
    ec.set_defaults(func=cmd_eval_mc)

    a = sub.add_parser("analyze", help="GradCAM++, linear probes and the synergy study")
    asub = a.add_subparsers(dest="analysis", required=True)
    gc = asub.add_parser("gradcam", help="which image tokens drive the answer about a concept (overlay PNG)")
    gc.add_argument("image")
    gc.add_argument("concept", help='e.g. "circle" or "red square"')
    gc.add_argument(
        "--target",
        choices=["probe", "answer"],
        default="probe",
        help="probe (default): a linear probe of the concept on the frozen MAR encoder features, fitted on "
        "shapes-world scenes or on --positives/--negatives; answer: the LLM's Yes/No log-odds to "
        "--question",
    )
    gc.add_argument("--positives", help="folder of images showing the concept (with --negatives: the probe's data)")
    gc.add_argument("--negatives", help="folder of images without the concept")
    gc.add_argument("--probe-scenes", type=int, default=2000, help="shapes-world scenes to fit the probe on")
    gc.add_argument("--save-probe", metavar="FILE", help="write the fitted probe here (.safetensors), for --probe")
    gc.add_argument("--probe", metavar="FILE", help="use a probe saved by --save-probe instead of fitting one")
    gc.add_argument("--seed", type=int, default=1, help="seed of the probe's scenes and held-out split")
    gc.add_argument("--question", help='with --target answer; default: "Is there a <concept> in the image?"')
    gc.add_argument("-o", "--output", default="gradcam.png")
    gc.add_argument(
        "--upsample",
        choices=["nearest", "bilinear"],
        default="nearest",
        help="token map to pixels: nearest shows exactly which tokens; bilinear is smoother",
    )
    gc.add_argument(
        "--method",
        choices=["gradcam++", "integrated-gradients"],
        default="gradcam++",
        help="gradcam++: the paper's map over the MAR encoder's output rows; integrated-gradients: "
        "attribution to the encoder's input tokens from a plain white image",
    )
    _add_model_args(gc)
    gc.set_defaults(func=cmd_gradcam)
    lo = asub.add_parser(
        "localisation",
        help="how much heat GradCAM++ / integrated gradients put on the asked shape over random shapes-world scenes",
    )
    lo.add_argument(
        "--methods",
        nargs="+",
        choices=["gradcam++", "integrated-gradients"],
        default=["gradcam++", "integrated-gradients"],
    )
    lo.add_argument("--targets", nargs="+", choices=["probe", "answer"], default=["probe", "answer"])
    lo.add_argument("--scenes", type=int, default=30)
    lo.add_argument("--seed", type=int, default=0, help="seed of the scored scenes")
    lo.add_argument("--probe-scenes", type=int, default=2000)
    lo.add_argument("--probe-seed", type=int, default=1, help="seed of the probes' scenes")
    lo.add_argument("--locality", action="store_true", help="also measure how local the encoder's output rows are")
    lo.add_argument(
        "--figure",
        help="also write a PNG: a fixed scene with each shape's GradCAM++ overlays (probe above, answer below)",
    )
    lo.add_argument("--json", help="also write the results here")
    _add_model_args(lo)
    lo.set_defaults(func=cmd_localisation)
    pr = asub.add_parser("probe", help="linear probes: encoder features vs VAE latents vs pixels (shapes world)")
    pr.add_argument("--train", type=int, default=1000)
    pr.add_argument("--test", type=int, default=500)
    pr.add_argument("--seeds", type=int, default=3)
    pr.add_argument("--json")
    _add_model_args(pr)
    pr.set_defaults(func=cmd_probe)

    cx = asub.add_parser("context", help="teacher-forced loss vs visible tokens: does the generator use context?")
    cx.add_argument("--images", type=int, default=64)
    cx.add_argument("--repeats", type=int, default=3)
    _add_model_args(cx)
    cx.set_defaults(func=cmd_context)
    wb = asub.add_parser(
        "words",
        help="teacher-forced loss under every colour (or shape) word: which prompt words "
        "the generator binds (shapes world)",
    )
    wb.add_argument("--attribute", choices=["color", "shape"], default="color")
    wb.add_argument("--scenes", type=int, default=24, help="images per (true value, other attribute) case")
    wb.add_argument("--repeats", type=int, default=6, help="noise draws per image, shared by every word")
    wb.add_argument("--seed", type=int, default=0)
    wb.add_argument("--json")
    _add_model_args(wb)
    wb.set_defaults(func=cmd_words)
    dr = asub.add_parser(
        "drawn",
        help="what the generator draws for each colour (or shape) word: a confusion table "
        "of one-object prompts (shapes world)",
    )
    dr.add_argument("--attribute", choices=["color", "shape"], default="color")
    dr.add_argument("--images", type=int, default=16, help="images per (colour, shape) prompt")
    dr.add_argument("--seed", type=int, default=0)
    dr.add_argument("--preset", choices=list(PRESETS), help="speed preset (default: the model's settings)")
    dr.add_argument("--guidance-scale", type=float)
    dr.add_argument("--json")
    _add_model_args(dr)
    dr.set_defaults(func=cmd_drawn)
    cd = asub.add_parser(
        "codec",
        help="can the VAE carry every (colour, shape) pair, held-out ones included? "
        "encode -> decode round trips read by the detector (shapes world)",
    )
    cd.add_argument("--scenes", type=int, default=16, help="one-object scenes per (colour, shape) pair")
    cd.add_argument("--seed", type=int, default=0)
    cd.add_argument("--json")
    cd.add_argument(
        "--stage0-vae",
        help="check a bare stage-0 VAE folder (vae.safetensors + vae_config.json, e.g. "
        "runs/shapes/stage0_vae) instead of a model's VAE",
    )
    _add_model_args(cd)
    cd.set_defaults(func=cmd_codec)
    sy = asub.add_parser("synergy", help="same steps, text-to-image only vs + understanding data, several seeds")
    sy.add_argument("--base", required=True, help="model folder every run starts from (e.g. a stage-I export)")
    sy.add_argument("--outdir", required=True, help="runs and synergy.json go here (an interrupted study resumes)")
    sy.add_argument("--seeds", type=int, default=3)
    sy.add_argument("--steps", type=int, default=500, help="optimizer steps per run")
    sy.add_argument("--prompts", type=int, default=120, help="fresh GenEval-style prompts per scored model")
    sy.add_argument("--eval-seed", type=int, default=0)
    sy.add_argument("--t2i-batch", type=int, default=32)
    sy.add_argument("--und-batch", type=int, default=8, help="question-answering conversations per step (joint arm)")
    sy.add_argument("--lr", type=float, default=3e-4)
    sy.add_argument("--num-iter", type=int)
    sy.add_argument("--guidance-scale", type=float)
    sy.add_argument("--diffusion-steps")
    sy.add_argument("--x0-clip", type=float)
    sy.add_argument("--device")
    sy.set_defaults(func=cmd_synergy)

    c = sub.add_parser("convert", help="official files -> our format (config.json + model.safetensors)")
    c.add_argument("-o", "--output", required=True, help="output folder")
    c.add_argument("--save-dtype", choices=sorted(DTYPES), help="store weights in this dtype")
    _add_model_args(c)
    c.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train":  # the trainer has its own parser (torchrun -m harmon.train takes the same flags)
        from harmon.train.cli import main as train_main

        return train_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"harmon {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
