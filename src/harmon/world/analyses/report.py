"""Write ``docs/RESULTS.md`` (tables, verdicts, matplotlib plots) from the probe, localisation and synergy result files.

    python -m harmon.world.analyses.report --probe runs/results/probe.json \\
        --synergy runs/results/synergy/synergy.json --localisation runs/results/localisation.json --out docs/RESULTS.md

The JSON files are what ``harmon analyze probe --json``, ``harmon analyze localisation --json`` and
``harmon analyze synergy`` write; each records its own
settings, seeds and wall time, and this report states them next to its table. Verdicts are computed, not typed:
a difference counts only when it exceeds the two standard deviations added together.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
from pathlib import Path
from typing import Any

from harmon.world.analyses.localisation import format_localisation_table
from harmon.world.analyses.probe import FEATURES, TASKS, format_probe_table
from harmon.world.analyses.synergy import ARMS, format_synergy_table, summarize

logger = logging.getLogger(__name__)


def _machine() -> str:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def compare(a: tuple[float, float], b: tuple[float, float]) -> str:
    """'higher' / 'lower' / 'tied' for mean±std ``a`` against ``b`` (a gap must exceed std_a + std_b)."""
    gap = a[0] - b[0]
    if abs(gap) <= a[1] + b[1]:
        return "tied"
    return "higher" if gap > 0 else "lower"


def probe_verdict(result: dict[str, Any]) -> str:
    acc = result["accuracy"]
    wins_vae = [t for t in TASKS if compare(tuple(acc[t]["encoder_mean"]), tuple(acc[t]["vae"])) == "higher"]
    best = {t: max(FEATURES, key=lambda f: acc[t][f][0]) for t in TASKS}
    lines = [
        f"- Mean-pooled encoder features beat VAE latents (beyond the error bars) on {len(wins_vae)} of "
        f"{len(TASKS)} tasks ({', '.join(wins_vae) or 'none'}).",
        "- Best feature per task: " + ", ".join(f"{t}: {best[t]}" for t in TASKS) + ".",
    ]
    agree = len(wins_vae) > len(TASKS) / 2
    lines.append(
        f"- The paper's claim (the MAR encoder's features carry more semantics than the VAE's) "
        f"{'holds' if agree else 'does not clearly hold'} at this scale."
    )
    return "\n".join(lines)


def synergy_verdict(study: dict[str, Any]) -> str:
    s = study.get("summary") or summarize(study)
    if not all(a in s for a in ARMS):
        return "- Incomplete: both arms are needed for a verdict."
    joint, alone = tuple(s["joint"]["overall"]), tuple(s["t2i_only"]["overall"])
    outcome = compare(joint, alone)
    text = {
        "higher": "improves generation: the paper's claim holds at this scale",
        "lower": "hurts generation here: the paper's claim does not hold at this scale",
        "tied": "makes no difference beyond the seed-to-seed spread: this run neither confirms nor refutes "
        "the paper's claim",
    }[outcome]
    return (
        f"- Joint training {text} (overall {joint[0]:.3f} ± {joint[1]:.3f} with understanding data vs "
        f"{alone[0]:.3f} ± {alone[1]:.3f} without, {s['joint']['n']} and {s['t2i_only']['n']} seeds)."
    )


def localisation_verdict(result: dict[str, Any]) -> str:
    """Whether concept maps of the encoder's features fall on the asked objects (over 1.5x a flat map's share)."""
    lines = []
    for r in result["rows"]:
        what = "a linear concept probe on the frozen encoder" if r["target"] == "probe" else "the LLM's Yes/No answer"
        where = (
            "falls on the asked shape (over 1.5x)"
            if r["ratio"] > 1.5
            else "stays under 1.5x: not counted as falling on the asked shape"
        )
        lines.append(
            f"- {r['method']} of {what}: {r['heat_inside']:.2f} of the heat inside the asked shape's boxes, "
            f"{r['ratio']:.2f}x their share of the image: the map {where}."
        )
    probe = [r for r in result["rows"] if r["target"] == "probe" and r["method"] == "gradcam++"]
    if probe:
        holds = probe[0]["ratio"] > 1.5
        lines.append(
            f"- The paper's claim (the MAR encoder's features respond precisely to visual concepts) "
            f"{'holds' if holds else 'does not clearly hold'} at this scale, by GradCAM++ of a concept probe."
        )
    return "\n".join(lines)


def plot_probe(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / len(FEATURES)
    for i, f in enumerate(FEATURES):
        means = [result["accuracy"][t][f][0] for t in TASKS]
        stds = [result["accuracy"][t][f][1] for t in TASKS]
        ax.bar([k + i * width for k in range(len(TASKS))], means, width, yerr=stds, capsize=2, label=f)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(TASKS))], TASKS)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Linear probes on frozen features ({len(result['seeds'])} seeds, mean ± std)")
    ax.legend(fontsize=7, ncol=4, loc="lower center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_synergy(study: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = study.get("summary") or summarize(study)
    cats = ["overall", *next(iter(s.values()))["accuracy"]]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / len(s)
    for i, (arm, row) in enumerate(s.items()):
        vals = [row["overall"], *(row["accuracy"][c] for c in cats[1:])]
        ax.bar(
            [k + i * width for k in range(len(cats))],
            [v[0] for v in vals],
            width,
            yerr=[v[1] for v in vals],
            capsize=2,
            label=f"{arm} ({row['n']} seeds)",
        )
        for seed_row in (r for k, r in study["runs"].items() if k.startswith(arm + "/")):  # each seed as a dot
            ax.scatter([i * width], [seed_row["overall"]], s=8, color="black", zorder=3)
    ax.set_xticks([k + width * (len(s) - 1) / 2 for k in range(len(cats))], cats, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("GenEval-style accuracy")
    ax.set_title(f"Synergy: {study['steps']} steps each, same text-to-image stream")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    probe: dict[str, Any] | None,
    study: dict[str, Any] | None,
    out: Path,
    extra: str = "",
    localisation: dict[str, Any] | None = None,
    after: str = "",
) -> Path:
    """Write the report to ``out`` (figures into ``results/`` beside it), one section per result given, between
    ``extra`` (Markdown under the title) and ``after`` (Markdown at the end)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    figs = out.parent / "results"
    figs.mkdir(exist_ok=True)
    parts = [
        "# Results: the paper's findings at shapes-world scale",
        "",
        "Regenerated by `python -m harmon.world.analyses.report` (see each section for the commands that made its "
        f"inputs). Machine of this report: {_machine()}.",
        "",
    ]
    if extra:
        parts += [extra.strip(), ""]
    if probe is not None:
        parts += _probe_section(probe, figs)
    if localisation is not None:
        parts += _localisation_section(localisation, figs)
    if study is not None:
        parts += _synergy_section(study, figs)
    if after:
        parts += [after.strip(), ""]
    out.write_text("\n".join(parts))
    return out


def _probe_section(probe: dict[str, Any], figs: Path) -> list[str]:
    plot_probe(probe, figs / "probe.png")
    return [
        "## Linear probes: shared encoder vs VAE latents vs pixels",
        "",
        f"Model: `{probe.get('model', 'shipped shapes model')}`. Seeds {probe['seeds']}, "
        f"{probe['n_train']} training / {probe['n_test']} test scenes per task and seed, "
        f"{probe['seconds']:.0f} s. Command: `{probe.get('command', 'harmon analyze probe')}`.",
        "",
        format_probe_table(probe),
        "",
        probe_verdict(probe),
        "",
        "![probe](results/probe.png)",
        "",
    ]


def _localisation_section(localisation: dict[str, Any], figs: Path) -> list[str]:
    rows = localisation["rows"]
    parts = [
        "## Concept response: where GradCAM++ puts a concept in the encoder's features",
        "",
        f"Model: `{localisation.get('model', 'shipped shapes model')}`. {rows[0]['scenes']} random scenes "
        f"(seed {rows[0]['seed']}), {rows[0]['cases']} (scene, shape present) cases; the concept is the bare "
        f"shape; a flat map scores the boxes' share of the image, {rows[0]['boxes_share']:.3f}. "
        f"{localisation.get('seconds', 0):.0f} s. Command: "
        f"`{localisation.get('command', 'harmon analyze localisation')}`.",
        "",
        format_localisation_table(rows),
        "",
    ]
    parts += _localisation_notes(localisation)
    parts += [localisation_verdict(localisation), ""]
    figure = localisation.get("figure")
    if figure and Path(figure).is_file():
        import shutil

        if Path(figure).resolve() != (figs / "gradcam.png").resolve():
            shutil.copy(figure, figs / "gradcam.png")
        parts += [
            "A fixed scene and each shape's GradCAM++ overlay (circle, square, triangle); top row: the "
            "concept probe, bottom row: the LLM's answer.",
            "",
            "![gradcam](results/gradcam.png)",
            "",
        ]
    return parts


def _localisation_notes(localisation: dict[str, Any]) -> list[str]:
    """The probes' accuracy, how often the model said "Yes", and the encoder's locality, where recorded."""
    rows, parts = localisation["rows"], []
    probe_rows = [r for r in rows if "probe_accuracy" in r]
    if probe_rows:
        acc = ", ".join(f"{k} {v:.3f}" for k, v in probe_rows[0]["probe_accuracy"].items())
        parts += [
            f"Probes fitted on {probe_rows[0]['probe_scenes']} other scenes (seed "
            f"{probe_rows[0]['probe_seed']}); held-out accuracy {acc}.",
            "",
        ]
    answered = [r["answered_yes"] for r in rows if "answered_yes" in r]
    if answered:
        parts += [
            f'Asked "Is there a <shape> in the image?" of these scenes, the model answered "Yes" in '
            f"{answered[0]:.0%} of the cases, though the shape is always there.",
            "",
        ]
    if "encoder_locality" in localisation:
        loc = localisation["encoder_locality"]
        parts += [
            f"The encoder's output rows stay local: row i depends on its own input token "
            f"{loc['own_vs_other']:.1f}x as much as on any other (mean Jacobian norms, {loc['scenes']} "
            "scenes).",
            "",
        ]
    return parts


def _synergy_section(study: dict[str, Any], figs: Path) -> list[str]:
    plot_synergy(study, figs / "synergy.png")
    seconds = sum(r.get("train_seconds", 0) + r.get("eval_seconds", 0) for r in study["runs"].values())
    return [
        "## Synergy: does understanding data help generation?",
        "",
        f"Every run starts from `{study['base']}` and trains {study['steps']} steps with the same "
        f"text-to-image stream (batch {study['t2i_batch']}, lr {study['lr']}); the joint arm adds "
        f"{study['und_batch']} question-answering conversations per step. Scored on "
        f"{study['n_prompts']} fresh prompts (eval seed {study['eval_seed']}, sampling "
        f"{study.get('settings') or 'model defaults'}). Wall time {seconds / 60:.0f} min. "
        f"Command: `{study.get('command', 'harmon analyze synergy')}`.",
        "",
        format_synergy_table(study),
        "",
        synergy_verdict(study),
        "",
        "![synergy](results/synergy.png)",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probe", help="JSON written by `harmon analyze probe --json`")
    p.add_argument("--synergy", help="synergy.json written by `harmon analyze synergy`")
    p.add_argument("--localisation", help="JSON written by `harmon analyze localisation --json`")
    p.add_argument("--extra", help="a Markdown file whose text goes under the title (e.g. the shipped model's tables)")
    p.add_argument(
        "--after", help="a Markdown file whose text goes at the end (studies whose commands print their own tables)"
    )
    p.add_argument("--out", default="docs/RESULTS.md")
    args = p.parse_args(argv)
    probe = json.loads(Path(args.probe).read_text()) if args.probe else None
    study = json.loads(Path(args.synergy).read_text()) if args.synergy else None
    extra = Path(args.extra).read_text() if args.extra else ""
    localisation = json.loads(Path(args.localisation).read_text()) if args.localisation else None
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    after = Path(args.after).read_text() if args.after else ""
    logger.info("wrote %s", write_report(probe, study, Path(args.out), extra, localisation, after))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
