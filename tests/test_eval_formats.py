"""The field-format runners: GenEval layout / resume / rank split and shapes scoring, POPE, and their CLIs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import harmon_eval, pixels
from PIL import Image

from harmon import cli
from harmon.eval import common, geneval, pope
from harmon.world import WorldConfig, assets, evaluate, render, sample_eval_prompts, scene_for_prompt

FAST = {"num_iter": 2, "num_sampling_steps": "2", "image_size": 64}
FAST_CLI = ["--num-iter", "2", "--diffusion-steps", "2", "--image-size", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def prompts():
    return geneval.read_prompts(assets.SHAPES_METADATA, limit=3)


def tree(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


# ---- GenEval ------------------------------------------------------------------------------------------------


def test_geneval_layout_is_what_the_official_evaluator_reads(pipe, prompts, tmp_path):
    out = geneval.generate_geneval(pipe, prompts, tmp_path, n_samples=2, seed=3, **FAST)
    assert out["generated"] == [0, 1, 2] and out["skipped"] == []
    folders = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [f.name for f in folders] == ["00000", "00001", "00002"]
    for i, folder in enumerate(folders):
        assert folder.name.isdigit() and len(folder.name) == 5
        with (folder / "metadata.jsonl").open() as f:
            assert json.load(f) == prompts[i]  # the evaluator json.load()s it
        assert (folder / "metadata.jsonl").read_text().count("\n") == 1
        names = sorted(p.name for p in (folder / "samples").iterdir())
        assert names == ["00000.png", "00001.png"] and all(re.fullmatch(r"\d+\.png", n) for n in names)
        assert Image.open(folder / "samples" / "00000.png").size == (64, 64)
        assert Image.open(folder / "grid.png").size == (128, 64)
    config = json.loads((tmp_path / "generation_config.json").read_text())
    assert config["prompt_prefix"] == "Generate an image: " and config["n_samples"] == 2 and config["seed"] == 3
    assert config["settings"]["num_iter"] == 2 and config["settings"]["num_sampling_steps"] == "2"
    assert config["settings"]["guidance_scale"] == pipe.config.generation.guidance_scale
    # other settings in the same folder are refused instead of mixing two runs
    with pytest.raises(ValueError, match="other settings"):
        geneval.generate_geneval(pipe, prompts, tmp_path, n_samples=2, seed=4, **FAST)
    with pytest.raises(ValueError, match="other settings \\(model"):
        geneval.generate_geneval(pipe, prompts, tmp_path, n_samples=2, seed=3, extra_config={"model": "b"}, **FAST)


def test_geneval_resume_redoes_only_missing_work(pipe, prompts, tmp_path, monkeypatch):
    real_replace = os.replace
    calls = []

    def dies_on_the_fourth_write(src, dst):
        calls.append(dst)
        if len(calls) == 4:
            raise KeyboardInterrupt("killed mid-write")
        real_replace(src, dst)

    monkeypatch.setattr(common.os, "replace", dies_on_the_fourth_write)
    with pytest.raises(KeyboardInterrupt):
        geneval.generate_geneval(pipe, prompts, tmp_path, n_samples=2, grid=False, **FAST)
    monkeypatch.setattr(common.os, "replace", real_replace)
    # config, metadata 0, sample 0/0 written; sample 0/1 interrupted: no final file, no temp left behind
    assert not geneval.sample_path(tmp_path, 0, 1).exists()
    assert not list(tmp_path.rglob("*.tmp"))
    out = geneval.generate_geneval(pipe, prompts, tmp_path, n_samples=2, grid=False, **FAST)
    assert out["generated"] == [0, 1, 2]

    before = {k: (p.stat().st_mtime_ns, p.read_bytes()) for k, p in tree(tmp_path).items()}
    lost = geneval.sample_path(tmp_path, 1, 1)
    lost_pixels = pixels(lost)
    lost.unlink()
    stray = geneval.sample_path(tmp_path, 2, 0).with_name(".00000.png.99999.tmp")  # a kill before the rename
    stray.write_bytes(b"\x89PNG truncated")
    (geneval.sample_path(tmp_path, 2, 0)).unlink()
    assert not geneval.SAMPLE_RE.match(stray.name)  # GenEval's evaluator never takes a temp file for a sample
    out = geneval.generate_geneval(pipe, prompts, tmp_path, n_samples=2, grid=False, **FAST)
    assert out["generated"] == [1, 2] and out["skipped"] == [0]
    assert not stray.exists()
    after = tree(tmp_path)
    assert set(after) == set(before)
    redone = {str(lost.relative_to(tmp_path)), str(geneval.sample_path(tmp_path, 2, 0).relative_to(tmp_path))}
    for k, (mtime, _data) in before.items():
        if k not in redone:
            assert after[k].stat().st_mtime_ns == mtime, k
    np.testing.assert_array_equal(pixels(lost), lost_pixels)  # same seed per prompt: the same image again


def test_geneval_ranks_together_equal_one_process(model_dir, tmp_path, monkeypatch, capsys):
    meta = tmp_path / "meta.jsonl"
    meta.write_text("".join(json.dumps(p) + "\n" for p in sample_eval_prompts(3, torch.Generator().manual_seed(1))))
    args = ["eval", "geneval", "--prompts", str(meta), "-n", "2", "--model", str(model_dir), *FAST_CLI]
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert cli.main([*args, "--outdir", str(tmp_path / "ranks")]) == 0
    assert "[rank 0/2]" in capsys.readouterr().out
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert cli.main([*args, "--outdir", str(tmp_path / "single")]) == 0
    split, single = tree(tmp_path / "ranks"), tree(tmp_path / "single")
    assert set(split) == set(single) and len([k for k in single if k.endswith(".png")]) == 3 * 3
    for k in single:
        if k.endswith(".png"):
            np.testing.assert_array_equal(pixels(split[k]), pixels(single[k]))
        elif k.endswith(".jsonl"):
            assert split[k].read_bytes() == single[k].read_bytes()


def test_geneval_shapes_scoring_of_a_written_folder(tmp_path):
    world = WorldConfig()
    g = torch.Generator().manual_seed(0)
    prompts = sample_eval_prompts(6, g)
    for i, p in enumerate(prompts):
        folder = geneval.prompt_folder(tmp_path, i)
        common.write_text_atomic(folder / "metadata.jsonl", json.dumps(p) + "\n")
        common.save_image_atomic(
            render(scene_for_prompt(p, g, world, allow_held_out=True)), folder / "samples" / "00000.png"
        )
        blank = Image.new("RGB", (64, 64), (255, 255, 255))  # nothing drawn: every prompt fails
        common.save_image_atomic(blank, folder / "samples" / "00001.png")
    (tmp_path / "notes").mkdir()  # not all digits: ignored, as by GenEval
    result = evaluate.score_shapes(tmp_path, n_samples=2)
    assert result["n_prompts"] == 6 and result["n_images"] == 12
    assert result["correct"] == [True, False] * 6 and result["overall"] == 0.5
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"filename", "tag", "prompt", "correct", "reason", "metadata"}
    assert rows[1]["filename"] == "00000/samples/00001.png" and rows[1]["reason"].startswith("expected")
    assert json.loads((tmp_path / "results.json").read_text())["accuracy"]["position"] == 0.5
    with pytest.raises(ValueError, match="3 samples"):
        evaluate.score_shapes(tmp_path, n_samples=3)


def test_cli_geneval_scores_the_shipped_prompts(model_dir, tmp_path, capsys):
    rc = harmon_eval(
        "geneval", model_dir, "--outdir", str(tmp_path), "--limit", "2", "-n", "1", "--score", "shapes", *FAST_CLI
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "generated 2 prompts" in text and "overall (mean of tags)" in text
    assert json.loads((tmp_path / "results.json").read_text())["n_images"] == 2


def test_cli_geneval_compile_reaches_generate(model_dir, tmp_path, monkeypatch):
    """`eval geneval --compile` generates with compile=True (the compiled path itself is tested in test_pipeline;
    here the real call runs eager to keep the test fast)."""
    from harmon.pipeline import HarmonPipeline

    seen = []
    real = HarmonPipeline.generate
    monkeypatch.setattr(
        HarmonPipeline, "generate", lambda self, *a, compile=False, **k: seen.append(compile) or real(self, *a, **k)
    )
    rc = harmon_eval("geneval", model_dir, "--outdir", str(tmp_path), "--limit", "1", "-n", "1", "--compile", *FAST_CLI)
    assert rc == 0 and seen == [True]


def test_cli_eval_shapes_scores_bare_shape_questions_apart(model_dir, capsys, monkeypatch):
    """`eval shapes --shape-questions N` adds POPE metrics of "Is there a <shape> in the image?" without moving the
    other tables (their own generators)."""
    from harmon.pipeline import HarmonPipeline

    asked = []
    real = HarmonPipeline.describe_many
    monkeypatch.setattr(
        HarmonPipeline, "describe_many", lambda self, images, qs, **k: asked.extend(qs) or real(self, images, qs, **k)
    )
    rc = harmon_eval(
        "shapes", model_dir, "--prompts", "0", "--questions", "14", "--shape-questions", "6", "--device", "cpu"
    )
    out = capsys.readouterr().out
    assert rc == 0 and "Bare-shape existence" in out and "n 6" in out
    assert len(asked) == 20 and all(re.fullmatch(r"Is there an? \w+ in the image\?", q) for q in asked[14:])
    first = asked[:14]
    asked.clear()
    assert (
        harmon_eval(
            "shapes", model_dir, "--prompts", "0", "--questions", "14", "--shape-questions", "0", "--device", "cpu"
        )
        == 0
    )
    assert asked == first and "Bare-shape" not in capsys.readouterr().out


def test_read_prompts_names_the_bad_line(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"prompt": "a circle", "tag": "single_object"}\n\n{"prompt": "a square",\n')
    with pytest.raises(common.FormatError, match=r"m\.jsonl:3: not valid JSON"):
        geneval.read_prompts(bad)
    bad.write_text('{"tag": "single_object"}\n')
    with pytest.raises(common.FormatError, match=r"m\.jsonl:1: missing field 'prompt'"):
        geneval.read_prompts(bad)


# ---- POPE ---------------------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pope_metrics_by_hand(tmp_path):
    labels = ["yes", "yes", "yes", "yes", "no", "no", "no", "no"]
    answers = [
        "Yes, there is a red circle.",  # yes  TP
        "There is. No doubt about it.",  # yes (first sentence only)  TP
        "Nothing else, it is there",  # yes ("nothing" is not "no")  TP
        "No.",  # no  FN
        "I think so",  # yes  FP
        "No, there is not.",  # no  TN
        "There is not a blue square",  # no  TN
        "NO",  # no  TN
    ]
    rows = [
        {
            "question_id": i + 1,
            "image": "x.png",
            "text": "Is there a red circle in the image?",
            "label": lab.capitalize() if i % 2 else lab,
        }
        for i, lab in enumerate(labels)
    ]
    questions = pope.read_pope(write_jsonl(tmp_path / "coco_pope_random.json", rows))
    scores = pope.score_pope(questions, answers)
    assert list(scores) == ["coco_pope_random"]
    m = scores["coco_pope_random"]
    # TP 3, FN 1, FP 1, TN 3
    assert m["accuracy"] == 6 / 8 and m["precision"] == 3 / 4 and m["recall"] == 3 / 4
    assert m["f1"] == pytest.approx(0.75) and m["yes_ratio"] == 4 / 8 and m["count"] == 8
    # a second file whose records carry a category: per split, plus "all"
    other = pope.read_pope(write_jsonl(tmp_path / "b.json", [{**rows[0], "category": "adversarial"}]))
    scores = pope.score_pope(questions + other, answers + ["No"])
    assert list(scores) == ["coco_pope_random", "adversarial", "all"]
    assert scores["adversarial"]["precision"] == 0.0 and scores["adversarial"]["recall"] == 0.0
    assert scores["all"]["count"] == 9 and scores["all"]["recall"] == 3 / 5
    assert "coco_pope_random" in pope.format_pope(scores)


def test_pope_errors_name_file_and_line(tmp_path, capsys):
    rows = [
        {"question_id": 1, "image": "x.png", "text": "Is there a cat?", "label": "yes"},
        {"question_id": 2, "image": "x.png", "text": "Is there a dog?", "label": "maybe"},
    ]
    with pytest.raises(common.FormatError, match=r"q\.json:2: label must be yes or no"):
        pope.read_pope(write_jsonl(tmp_path / "q.json", rows))
    with pytest.raises(common.FormatError, match=r"q\.json:1: missing field 'image'"):
        pope.read_pope(write_jsonl(tmp_path / "q.json", [{"question_id": 1, "text": "?", "label": "no"}]))
    # a missing image is reported before any model is loaded (there is none at --model here)
    write_jsonl(tmp_path / "q.json", rows[:1])
    assert cli.main(["eval", "pope", "--questions", str(tmp_path / "q.json"), "--model", str(tmp_path / "none")]) == 2
    assert "q.json:1: image 'x.png' not found" in capsys.readouterr().err


def test_cli_pope_on_the_shipped_splits(model_dir, tmp_path, capsys):
    out = tmp_path / "answers.jsonl"
    rc = harmon_eval(
        "pope",
        model_dir,
        "--limit",
        "2",
        "--max-new-tokens",
        "3",
        "--answers-out",
        str(out),
        "--json",
        str(tmp_path / "s.json"),
        "--device",
        "cpu",
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert all(s in text for s in ("random", "popular", "adversarial", "all"))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and {"question_id", "prompt", "text", "category", "label", "pred"} <= set(rows[0])
    assert rows[0]["question"] == rows[0]["prompt"] and rows[0]["answer"] == rows[0]["text"]  # POPE's evaluate.py
    assert json.loads((tmp_path / "s.json").read_text())["splits"]["random"]["count"] == 2
    # explicit files and image folder, as for COCO
    rc = harmon_eval(
        "pope",
        model_dir,
        "--questions",
        str(assets.SHAPES_POPE / "popular.json"),
        "--images",
        str(assets.SHAPES_POPE / "images"),
        "--limit",
        "1",
        "--max-new-tokens",
        "2",
    )
    assert rc == 0 and "popular" in capsys.readouterr().out
