"""Bad ``harmon eval`` and ``harmon analyze`` command lines: missing or malformed benchmark files, missing images,
counts out of range, and outputs that cannot be written (checked before the model loads and the work runs)."""

from __future__ import annotations

import json

from corpus_case import Case, cli
from corpus_files import both, folder, png, text

MODEL = ["--model", "{model}"]
POPE_LINE = {"question_id": 1, "image": "img.png", "text": "Is there a circle?", "label": "yes"}


def pope_file(*records: dict | str, name: str = "q.jsonl"):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    return text(name, "".join(line + "\n" for line in lines))


def pope(*flags: str) -> list[str]:
    return ["eval", "pope", "--questions", "{ws}/q.jsonl", *MODEL, *flags]


def shapes(*flags: str) -> list[str]:
    return ["eval", "shapes", "--prompts", "1", "--questions", "1", "--shape-questions", "0", *MODEL, *flags]


def geneval(*flags: str) -> list[str]:
    return ["eval", "geneval", "--outdir", "{ws}/out", "--limit", "1", *MODEL, *flags]


EVAL = [
    cli(
        "eval-shapes-prompts-negative",
        "cli",
        shapes("--prompts", "-1"),
        "prompts",
        before_model=True,
    ),
    cli(
        "eval-shapes-questions-negative",
        "cli",
        shapes("--questions", "-5"),
        "questions",
        before_model=True,
    ),
    cli(
        "eval-shapes-json-is-a-folder",
        "cli",
        shapes("--json", "{ws}/res"),
        "{ws}/res",
        setup=folder("res"),
        before_model=True,
    ),
    cli(
        "eval-geneval-n-zero",
        "cli",
        geneval("-n", "0"),
        "-n",
        before_model=True,
    ),
    cli(
        "eval-geneval-limit-zero",
        "cli",
        geneval("--limit", "0"),
        "limit",
        before_model=True,
    ),
    cli(
        "eval-geneval-limit-negative",
        "cli",
        geneval("--limit", "-2"),
        "limit",
        before_model=True,
    ),
    cli(
        "eval-geneval-outdir-is-a-file",
        "cli",
        ["eval", "geneval", "--outdir", "{ws}/notes.txt", "--limit", "1", "-n", "1", *MODEL],
        "{ws}/notes.txt",
        setup=text("notes.txt", "my notes\n"),
        before_model=True,
    ),
    cli("eval-pope-questions-missing", "cli", pope(), "{ws}/q.jsonl", before_model=True),
    cli(
        "eval-pope-image-missing",
        "cli",
        pope(),
        ("q.jsonl:1", "img.png"),
        setup=pope_file(POPE_LINE),
        before_model=True,
    ),
    cli(
        "eval-pope-line-not-json",
        "cli",
        pope(),
        "q.jsonl:2",
        setup=both(png, pope_file(POPE_LINE, "{question_id: 2")),
        before_model=True,
    ),
    cli(
        "eval-pope-label-not-yes-no",
        "cli",
        pope(),
        ("q.jsonl:1", "maybe"),
        setup=both(png, pope_file({**POPE_LINE, "label": "maybe"})),
        before_model=True,
    ),
    cli(
        "eval-pope-without-question-text",
        "cli",
        pope(),
        ("q.jsonl:1", "text"),
        setup=both(png, pope_file({k: v for k, v in POPE_LINE.items() if k != "text"})),
        before_model=True,
    ),
    cli(
        "eval-pope-answers-out-is-a-folder",
        "cli",
        pope("--answers-out", "{ws}/answers"),
        "{ws}/answers",
        setup=both(png, pope_file(POPE_LINE), folder("answers")),
        before_model=True,
    ),
    cli(
        "eval-pope-limit-zero",
        "cli",
        pope("--limit", "0"),
        "limit",
        setup=both(png, pope_file(POPE_LINE)),
        before_model=True,
    ),
    cli("eval-mme-data-missing", "cli", ["eval", "mme", "--data", "{ws}/mme", *MODEL], "{ws}/mme", before_model=True),
    cli(
        "eval-mme-data-empty-folder",
        "cli",
        ["eval", "mme", "--data", "{ws}/mme", *MODEL],
        ("{ws}/mme", "no questions"),
        setup=folder("mme"),
        before_model=True,
    ),
    cli(
        "eval-mc-one-option",
        "cli",
        ["eval", "mc", "--data", "{ws}/mc.tsv", *MODEL],
        ("mc.tsv:2", "two options"),
        setup=text("mc.tsv", "index\tquestion\tA\tanswer\timage\n0\tWhich?\tred\tA\timg.png\n"),
        before_model=True,
    ),
    cli(
        "eval-mc-answer-not-an-option",
        "cli",
        ["eval", "mc", "--data", "{ws}/mc.tsv", *MODEL],
        ("mc.tsv:2", "'C'"),
        setup=text("mc.tsv", "index\tquestion\tA\tB\tanswer\timage\n0\tWhich?\tred\tblue\tC\timg.png\n"),
        before_model=True,
    ),
]

ANALYZE = [
    cli(
        "analyze-gradcam-image-missing",
        "cli",
        ["analyze", "gradcam", "{ws}/nope.png", "circle", *MODEL],
        "{ws}/nope.png",
    ),
    cli(
        "analyze-gradcam-output-bad-extension",
        "cli",
        ["analyze", "gradcam", "{ws}/img.png", "circle", "--target", "answer", "-o", "{ws}/cam.xyz", *MODEL],
        "'.xyz'",
        setup=png,
        before_model=True,
    ),
    cli(
        "analyze-gradcam-positives-without-negatives",
        "cli",
        ["analyze", "gradcam", "{ws}/img.png", "circle", "--positives", "{ws}/pos", *MODEL],
        ("--positives", "--negatives"),
        setup=both(png, folder("pos")),
        before_model=True,
    ),
    cli(
        "analyze-gradcam-probe-flag-with-answer-target",
        "cli",
        ["analyze", "gradcam", "{ws}/img.png", "circle", "--target", "answer", "--probe", "{ws}/p.safetensors", *MODEL],
        ("--probe", "--target"),
        setup=png,
        before_model=True,
    ),
    cli(
        "analyze-localisation-scenes-zero",
        "cli",
        ["analyze", "localisation", "--scenes", "0", *MODEL],
        "scenes",
        before_model=True,
    ),
    cli(
        "analyze-synergy-base-missing",
        "cli",
        ["analyze", "synergy", "--base", "{ws}/nope", "--outdir", "{ws}/study", "--seeds", "1", "--steps", "1"],
        "{ws}/nope",
    ),
]

CASES: list[Case] = [*EVAL, *ANALYZE]
