"""``harmon analyze``: GradCAM++ and its localisation score, linear probes, and the shapes-world studies."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from harmon.cli.common import (
    PRESET_NAMES,
    add_model_args,
    command_line,
    image_output,
    int_at_least,
    load_pipeline,
    output_file,
    save_image,
    seed_value,
    seeded,
    write_json,
)
from harmon.cli.studies import add_studies


def cmd_gradcam(args: argparse.Namespace) -> int:
    from harmon.analyze.gradcam import gradcam_plus_plus, integrated_gradients, overlay
    from harmon.images import load_image

    _check_gradcam_flags(args)  # before the model loads
    image = load_image(args.image)
    pipe = load_pipeline(args)
    probe = _concept_probe(pipe, args) if args.target == "probe" else None
    if probe is not None:
        print(f"probe: {probe}")
    method = gradcam_plus_plus if args.method == "gradcam++" else integrated_gradients
    cam = method(pipe, image, args.concept, question=args.question, upsample=args.upsample, probe=probe)
    print(save_image(overlay(image, cam), args.output))
    return 0


def _check_gradcam_flags(args: argparse.Namespace) -> None:
    """Flags that do not go together, refused by name before any work."""
    probe_flags = [f for f in ("positives", "negatives", "probe", "save_probe") if getattr(args, f)]
    if args.target == "answer" and probe_flags:
        raise ValueError(f"--{probe_flags[0].replace('_', '-')} belongs to --target probe, not --target answer")
    if args.target == "probe" and args.question:
        raise ValueError("--question is asked of the LLM: use it with --target answer")
    if args.probe and (args.positives or args.negatives):
        raise ValueError("--probe loads a fitted probe; --positives/--negatives fit a new one (not both)")
    if bool(args.positives) != bool(args.negatives):
        raise ValueError("--positives and --negatives go together (images with and without the concept)")


def _concept_probe(pipe, args: argparse.Namespace):
    """The concept probe of ``harmon analyze gradcam --target probe``: fitted on the caller's image folders, or on
    shapes-world scenes when the concept is a word of that world, or read from --probe."""
    from harmon.analyze.gradcam import ConceptProbe

    if args.probe:
        return ConceptProbe.load(args.probe)
    probe = _fit_concept_probe(pipe, args)
    if args.save_probe:
        probe.save(args.save_probe)
        print(f"probe saved: {args.save_probe}")
    return probe


def _fit_concept_probe(pipe, args: argparse.Namespace):
    from harmon.analyze.gradcam import ConceptProbe
    from harmon.eval.mme import IMAGE_SUFFIXES

    if args.positives:
        images, labels = [], []
        for folder, label in ((args.positives, True), (args.negatives, False)):
            path = Path(folder)
            if not path.is_dir():
                raise ValueError(f"not a folder: {path}")
            files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
            images += files
            labels += [label] * len(files)
        return ConceptProbe.fit(pipe, images, labels, args.concept, generator=seeded(args.seed))
    from harmon.world.analyses.localisation import world_probe

    try:
        return world_probe(pipe, args.concept, scenes=args.probe_scenes, seed=args.seed)
    except ValueError as err:
        raise ValueError(
            f"{err}. For other concepts give --positives DIR --negatives DIR (images with and "
            "without it), or use --target answer"
        ) from None


def _world_probes(pipe, args: argparse.Namespace) -> dict:
    """One concept probe per shape of the world, when the localisation scores the probe target."""
    if "probe" not in args.targets:
        return {}
    from harmon.world import WorldConfig
    from harmon.world.analyses.localisation import world_probes

    shapes = WorldConfig(image_size=pipe.config.generation.understanding_image_size).shapes
    return world_probes(pipe, shapes, scenes=args.probe_scenes, seed=args.probe_seed)


def _print_localisation(args: argparse.Namespace, rows: list[dict], probes: dict) -> None:
    from harmon.world.analyses.localisation import format_localisation_table

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


def cmd_localisation(args: argparse.Namespace) -> int:
    from harmon.world.analyses.localisation import demo_figure, encoder_locality, localisation

    if args.figure and "probe" not in args.targets:
        raise ValueError("--figure shows the probe's maps beside the answer's: keep 'probe' in --targets")
    t0 = time.perf_counter()
    pipe = load_pipeline(args)
    probes = _world_probes(pipe, args)
    kw = dict(scenes=args.scenes, seed=args.seed, probe_scenes=args.probe_scenes, probe_seed=args.probe_seed)
    rows = [localisation(pipe, m, t, probes=probes, **kw) for m in args.methods for t in args.targets]
    _print_localisation(args, rows, probes)
    result = {
        "rows": rows,
        "model": args.model or "shipped shapes model",
        "command": command_line("harmon analyze localisation"),
    }
    if args.locality:
        loc = encoder_locality(pipe, scenes=args.scenes, seed=args.seed)
        print(
            f"encoder rows: d(row i)/d(token i) is {loc['own_vs_other']:.1f}x d(row i)/d(token j), j != i "
            f"(mean Jacobian norms, {args.scenes} scenes)"
        )
        result["encoder_locality"] = loc
    if args.figure:
        save_image(demo_figure(pipe, probes), args.figure)
        result["figure"] = str(args.figure)
        print(f"figure: {args.figure}")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(args.json, result)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from harmon.world.analyses.probe import format_probe_table, run_probes

    pipe = load_pipeline(args)
    result = run_probes(pipe, n_train=args.train, n_test=args.test, seeds=tuple(range(args.seeds)))
    result["model"] = args.model or "shipped shapes model"
    result["command"] = command_line("harmon analyze probe")
    print(format_probe_table(result))
    print(
        f"seeds {result['seeds']}, {result['n_train']} train / {result['n_test']} test scenes, "
        f"{result['seconds']:.0f} s"
    )
    write_json(args.json, result)
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
    write_json(args.json, result)
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
    write_json(args.json, result)
    return 0


def cmd_codec(args: argparse.Namespace) -> int:
    from harmon.world.analyses.codec import StandaloneVAE, codec_round_trip, format_codec_table

    source = StandaloneVAE(args.stage0_vae) if args.stage0_vae else load_pipeline(args)
    result = codec_round_trip(source, scenes=args.scenes, seed=args.seed)
    print(format_codec_table(result))
    write_json(args.json, result)
    return 0


def _add_gradcam(asub: argparse._SubParsersAction) -> None:
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
    gc.add_argument(
        "--probe-scenes", type=int_at_least(1), default=2000, help="shapes-world scenes to fit the probe on"
    )
    gc.add_argument(
        "--save-probe", metavar="FILE", type=output_file, help="write the fitted probe here (.safetensors), for --probe"
    )
    gc.add_argument("--probe", metavar="FILE", help="use a probe saved by --save-probe instead of fitting one")
    gc.add_argument("--seed", type=seed_value, default=1, help="seed of the probe's scenes and held-out split")
    gc.add_argument("--question", help='with --target answer; default: "Is there a <concept> in the image?"')
    gc.add_argument("-o", "--output", type=image_output, default="gradcam.png")
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
    add_model_args(gc)
    gc.set_defaults(func=cmd_gradcam)


def _add_localisation(asub: argparse._SubParsersAction) -> None:
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
    lo.add_argument("--scenes", type=int_at_least(1), default=30)
    lo.add_argument("--seed", type=seed_value, default=0, help="seed of the scored scenes")
    lo.add_argument("--probe-scenes", type=int_at_least(1), default=2000)
    lo.add_argument("--probe-seed", type=seed_value, default=1, help="seed of the probes' scenes")
    lo.add_argument("--locality", action="store_true", help="also measure how local the encoder's output rows are")
    lo.add_argument(
        "--figure",
        type=image_output,
        help="also write a PNG: a fixed scene with each shape's GradCAM++ overlays (probe above, answer below)",
    )
    lo.add_argument("--json", type=output_file, help="also write the results here")
    add_model_args(lo)
    lo.set_defaults(func=cmd_localisation)


def _add_probe_context_words(asub: argparse._SubParsersAction) -> None:
    pr = asub.add_parser("probe", help="linear probes: encoder features vs VAE latents vs pixels (shapes world)")
    pr.add_argument("--train", type=int_at_least(1), default=1000)
    pr.add_argument("--test", type=int_at_least(1), default=500)
    pr.add_argument("--seeds", type=int_at_least(1), default=3)
    pr.add_argument("--json", type=output_file)
    add_model_args(pr)
    pr.set_defaults(func=cmd_probe)

    cx = asub.add_parser("context", help="teacher-forced loss vs visible tokens: does the generator use context?")
    cx.add_argument("--images", type=int_at_least(1), default=64)
    cx.add_argument("--repeats", type=int_at_least(1), default=3)
    add_model_args(cx)
    cx.set_defaults(func=cmd_context)

    wb = asub.add_parser(
        "words",
        help="teacher-forced loss under every colour (or shape) word: which prompt words "
        "the generator binds (shapes world)",
    )
    wb.add_argument("--attribute", choices=["color", "shape"], default="color")
    wb.add_argument("--scenes", type=int_at_least(1), default=24, help="images per (true value, other attribute) case")
    wb.add_argument("--repeats", type=int_at_least(1), default=6, help="noise draws per image, shared by every word")
    wb.add_argument("--seed", type=seed_value, default=0)
    wb.add_argument("--json", type=output_file)
    add_model_args(wb)
    wb.set_defaults(func=cmd_words)


def _add_drawn_codec(asub: argparse._SubParsersAction) -> None:
    dr = asub.add_parser(
        "drawn",
        help="what the generator draws for each colour (or shape) word: a confusion table "
        "of one-object prompts (shapes world)",
    )
    dr.add_argument("--attribute", choices=["color", "shape"], default="color")
    dr.add_argument("--images", type=int_at_least(1), default=16, help="images per (colour, shape) prompt")
    dr.add_argument("--seed", type=seed_value, default=0)
    dr.add_argument("--preset", choices=list(PRESET_NAMES), help="speed preset (default: the model's settings)")
    dr.add_argument("--guidance-scale", type=float)
    dr.add_argument("--json", type=output_file)
    add_model_args(dr)
    dr.set_defaults(func=cmd_drawn)

    cd = asub.add_parser(
        "codec",
        help="can the VAE carry every (colour, shape) pair, held-out ones included? "
        "encode -> decode round trips read by the detector (shapes world)",
    )
    cd.add_argument("--scenes", type=int_at_least(1), default=16, help="one-object scenes per (colour, shape) pair")
    cd.add_argument("--seed", type=seed_value, default=0)
    cd.add_argument("--json", type=output_file)
    cd.add_argument(
        "--stage0-vae",
        help="check a bare stage-0 VAE folder (vae.safetensors + vae_config.json, e.g. "
        "runs/shapes/stage0_vae) instead of a model's VAE",
    )
    add_model_args(cd)
    cd.set_defaults(func=cmd_codec)


def add_analyze(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("analyze", help="GradCAM++, linear probes and the synergy study")
    asub = a.add_subparsers(dest="analysis", required=True)
    _add_gradcam(asub)
    _add_localisation(asub)
    _add_probe_context_words(asub)
    _add_drawn_codec(asub)
    add_studies(asub)
