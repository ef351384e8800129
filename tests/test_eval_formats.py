"""The field-format runners: GenEval layout / resume / rank split, POPE, MME and multiple-choice scoring, CLIs."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_pipeline
from PIL import Image

from harmon import cli
from harmon.eval import common, geneval, mme, multiple_choice, pope
from harmon.world import WorldConfig, assets, evaluate, render, sample_eval_prompts, scene_for_prompt

FAST = {"num_iter": 2, "num_sampling_steps": "2", "image_size": 64}
FAST_CLI = ["--num-iter", "2", "--diffusion-steps", "2", "--image-size", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def model_dir(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def prompts():
    return geneval.read_prompts(assets.SHAPES_METADATA, limit=3)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


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
    rc = cli.main(
        [
            "eval",
            "geneval",
            "--outdir",
            str(tmp_path),
            "--limit",
            "2",
            "-n",
            "1",
            "--score",
            "shapes",
            "--model",
            str(model_dir),
            *FAST_CLI,
        ]
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
    rc = cli.main(
        [
            "eval",
            "geneval",
            "--outdir",
            str(tmp_path),
            "--limit",
            "1",
            "-n",
            "1",
            "--compile",
            "--model",
            str(model_dir),
            *FAST_CLI,
        ]
    )
    assert rc == 0 and seen == [True]


def test_cli_eval_shapes_scores_bare_shape_questions_apart(model_dir, capsys, monkeypatch):
    """`eval shapes --shape-questions N` adds POPE metrics of "Is there a <shape> in the image?" without moving the
    other tables (their own generators)."""
    from harmon.pipeline import HarmonPipeline

    asked = []
    real = HarmonPipeline.describe
    monkeypatch.setattr(
        HarmonPipeline, "describe", lambda self, image, q, **k: asked.append(q) or real(self, image, q, **k)
    )
    rc = cli.main(
        [
            "eval",
            "shapes",
            "--prompts",
            "0",
            "--questions",
            "14",
            "--shape-questions",
            "6",
            "--model",
            str(model_dir),
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "Bare-shape existence" in out and "n 6" in out
    assert len(asked) == 20 and all(re.fullmatch(r"Is there an? \w+ in the image\?", q) for q in asked[14:])
    first = asked[:14]
    asked.clear()
    assert (
        cli.main(
            [
                "eval",
                "shapes",
                "--prompts",
                "0",
                "--questions",
                "14",
                "--shape-questions",
                "0",
                "--model",
                str(model_dir),
                "--device",
                "cpu",
            ]
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
    rc = cli.main(
        [
            "eval",
            "pope",
            "--limit",
            "2",
            "--max-new-tokens",
            "3",
            "--answers-out",
            str(out),
            "--json",
            str(tmp_path / "s.json"),
            "--model",
            str(model_dir),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert all(s in text for s in ("random", "popular", "adversarial", "all"))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and {"question_id", "prompt", "text", "category", "label", "pred"} <= set(rows[0])
    assert json.loads((tmp_path / "s.json").read_text())["splits"]["random"]["count"] == 2
    # explicit files and image folder, as for COCO
    rc = cli.main(
        [
            "eval",
            "pope",
            "--questions",
            str(assets.SHAPES_POPE / "popular.json"),
            "--images",
            str(assets.SHAPES_POPE / "images"),
            "--limit",
            "1",
            "--max-new-tokens",
            "2",
            "--model",
            str(model_dir),
        ]
    )
    assert rc == 0 and "popular" in capsys.readouterr().out


# ---- MME ----------------------------------------------------------------------------------------------------


def test_mme_answer_parsing():
    cases = {
        "Yes": "yes",
        "no": "no",
        " YES.": "yes",
        "Yes, there is.": "yes",
        "No, there is not.": "no",
        "Nope": "no",
        "Not at all": "no",
        "There is a dog": "other",
        "It is yes": "other",
        "": "other",
    }
    assert {a: mme.mme_answer(a) for a in cases} == cases


def test_mme_scores_by_hand(tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    rows = []
    for subtask, img in [
        ("existence", "e1"),
        ("existence", "e2"),
        ("count", "c1"),
        ("count", "c2"),
        ("commonsense_reasoning", "r1"),
    ]:
        rows += [
            {"subtask": subtask, "image": f"{img}.png", "question": f"{img} q1", "answer": "Yes"},
            {"subtask": subtask, "image": f"{img}.png", "question": f"{img} q2", "answer": "No"},
        ]
    items = mme.read_mme(write_jsonl(tmp_path / "mme.jsonl", rows))
    answers = [
        "Yes",
        "No",  # e1: both right
        "Yes",
        "Yes",  # e2: one wrong -> existence acc 3/4, acc+ 1/2, score 125
        "Yes.",
        "Maybe",  # c1: "other" is wrong
        "no",
        "No",
    ]  # c2: one wrong -> count acc 2/4, acc+ 0/2, score 50
    answers += ["yes", "no"]  # r1: both right -> 200
    scores = mme.score_mme(items, answers)
    ex, co, re_ = (scores["subtasks"][k] for k in ("existence", "count", "commonsense_reasoning"))
    assert (ex["accuracy"], ex["accuracy_plus"], ex["score"]) == (0.75, 0.5, 125.0)
    assert (co["accuracy"], co["accuracy_plus"], co["score"]) == (0.5, 0.0, 50.0)
    assert ex["images"] == 2 and ex["questions"] == 4 and re_["score"] == 200.0
    assert scores["perception"] == 175.0 and scores["cognition"] == 200.0 and scores["total"] == 375.0
    assert "perception (sum)" in mme.format_mme(scores)
    # --limit keeps the first N images of each sub-task
    assert len(mme.read_mme(tmp_path / "mme.jsonl", limit=1)) == 6


def test_mme_folder_layouts_and_answers_roundtrip(tmp_path):
    # MME's release layout: images and per-image question files, side by side or in images/ + questions_answers_YN/
    rel = tmp_path / "MME_Benchmark_release_version"
    (rel / "existence").mkdir(parents=True)
    (rel / "artwork" / "images").mkdir(parents=True)
    (rel / "artwork" / "questions_answers_YN").mkdir()
    Image.new("RGB", (8, 8)).save(rel / "existence" / "001.jpg")
    (rel / "existence" / "001.txt").write_text(
        "Is there a dog? Please answer yes or no.\tYes\nIs there a cat? Please answer yes or no.\tNo\n"
    )
    Image.new("RGB", (8, 8)).save(rel / "artwork" / "images" / "77.png")
    (rel / "artwork" / "questions_answers_YN" / "77.txt").write_text("Is it by Monet?\tNo\nIs it by Manet?\tYes\n")
    items = mme.read_mme(rel)
    assert [(it["subtask"], it["image_name"], it["label"]) for it in items] == [
        ("artwork", "77.png", "no"),
        ("artwork", "77.png", "yes"),
        ("existence", "001.jpg", "yes"),
        ("existence", "001.jpg", "no"),
    ]
    assert all(common.find_image(it["image"], it["roots"]) for it in items)
    # the eval_tool results layout we write is read back (4th column ignored) with the images under --images
    out = mme.write_mme_answers(tmp_path / "results", items, ["No", "Yes\tthere\nis", "Yes", "No"])
    assert (out / "existence.txt").read_text().splitlines()[1] == (
        "001.jpg\tIs there a cat? Please answer yes or no.\tNo\tNo"
    )
    assert (out / "artwork.txt").read_text().splitlines()[1].endswith("\tYes there is")
    again = mme.read_mme(out, images=rel)
    assert [(it["question"], it["label"]) for it in again] == [(it["question"], it["label"]) for it in items]
    assert all(common.find_image(it["image"], it["roots"]) for it in again)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "color.txt").write_text("a.png\tIs it red?\n")
    with pytest.raises(common.FormatError, match=r"color\.txt:1: expected 3 tab-separated fields"):
        mme.read_mme(tmp_path / "bad")


def test_cli_mme_on_the_shipped_file(model_dir, tmp_path, capsys):
    rc = cli.main(
        [
            "eval",
            "mme",
            "--limit",
            "1",
            "--max-new-tokens",
            "3",
            "--answers-out",
            str(tmp_path / "r"),
            "--model",
            str(model_dir),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert all(s in text for s in ("existence", "count", "position", "color", "perception (sum)"))
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "color.txt",
        "count.txt",
        "existence.txt",
        "position.txt",
    ]
    assert len((tmp_path / "r" / "count.txt").read_text().splitlines()[0].split("\t")) == 4


# ---- multiple choice ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, letter",
    [
        ("B", "B"),
        ("b", "B"),
        ("(C)", "C"),
        ("D.", "D"),
        ("**A**", "A"),
        ("A. Red", "A"),
        ("(B) Blue", "B"),
        ("C) green", "C"),
        ("D: yellow", "D"),
        ("Answer: C", "C"),
        ("The answer is (B).", "B"),
        ("the correct option is D", "D"),
        ("Choice: A", "A"),
        ("I pick B", "B"),
        ("A purple circle", None),
        ("A blue circle", "B"),  # "A" + lower-case word is the article
        ("Blue", "B"),
        ("blue.", "B"),
        ("The circle is green", "C"),
        ("red or blue", None),
        ("purple", None),
        ("E", None),
        ("", None),
        ("the answer is a red one", "A"),
    ],
)
def test_letter_extraction(answer, letter):
    assert multiple_choice.extract_letter(answer, ["red", "blue", "green", "yellow"]) == letter


def test_letter_extraction_of_numbers_and_short_option_lists():
    assert multiple_choice.extract_letter("There are 2 circles.", ["1", "2", "3", "4"]) == "B"
    assert multiple_choice.extract_letter("12", ["1", "2", "12"]) == "C"
    assert multiple_choice.extract_letter("D", ["cat", "dog", "cow"]) is None  # no option D


def mc_rows() -> list[dict]:
    return [
        {
            "index": 0,
            "question": "Which color?",
            "hint": "",
            "A": "red",
            "B": "blue",
            "C": "green",
            "D": "",
            "answer": "B",
            "category": "color",
            "image": "x.png",
        },
        {
            "index": 1,
            "question": "How many?",
            "hint": "Count the circles.",
            "A": "1",
            "B": "2",
            "C": "3",
            "D": "4",
            "answer": "D",
            "category": "count",
            "image": "x.png",
        },
    ]


def test_mc_prompt_and_circular_evaluation_by_hand(tmp_path):
    questions = multiple_choice.read_mc(write_jsonl(tmp_path / "mc.jsonl", mc_rows()))
    plain = multiple_choice.expand(questions, circular=False)
    assert multiple_choice.build_prompt(plain[1]) == (
        "Count the circles.\nHow many?\nA. 1\nB. 2\nC. 3\nD. 4\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert multiple_choice.score_mc(plain, ["B", "D"])["accuracy"] == 1.0
    asked = multiple_choice.expand(questions, circular=True)
    assert [(q["group"], q["rotation"], q["options"], q["answer"]) for q in asked[:3]] == [
        ("0", 0, ["red", "blue", "green"], "B"),
        ("0", 1, ["blue", "green", "red"], "A"),
        ("0", 2, ["green", "red", "blue"], "C"),
    ]
    assert len(asked) == 3 + 4 and asked[3 + 1]["options"] == ["2", "3", "4", "1"] and asked[4]["answer"] == "C"
    # question 0 right in every rotation (by letter or by option text); question 1 wrong in its last rotation
    answers = ["B", "A. blue", "blue", "D", "C", "B", "D"]
    scores = multiple_choice.score_mc(asked, answers)
    assert scores["correct"] == [True, True, True, True, True, True, False]
    assert scores["accuracy"] == 0.5 and scores["count"] == 2 and scores["circular"]
    assert scores["categories"] == {"color": {"accuracy": 1.0, "count": 1}, "count": {"accuracy": 0.0, "count": 1}}
    assert "circular" in multiple_choice.format_mc(scores)


def test_mc_mmbench_tsv_with_base64_images_and_rotated_copies(tmp_path):
    buf = Image.new("RGB", (8, 8), (200, 10, 10))
    b64 = common.image_to_base64(buf)
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    rows = [
        ["5", "Which color?", "nan", "red", "blue", "", "", "A", "color", b64],
        ["1000005", "Which color?", "nan", "blue", "red", "", "", "B", "color", "5"],  # copy, image by index
        ["6", "Which shape?", "", "circle", "square", "", "", "A", "shape", b64],
    ]
    path = tmp_path / "mmbench.tsv"
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    questions = multiple_choice.read_mc(path)
    image = common.load_image_field(questions[1]["image"], questions[1]["roots"], "x")
    assert np.asarray(image)[0, 0].tolist() == [200, 10, 10]
    assert [q["index"] for q in multiple_choice.expand(questions, circular=False)] == ["5", "6"]
    asked = multiple_choice.expand(questions, circular=True)  # the file's own copies, not our rotations
    assert [(q["group"], q["rotation"]) for q in asked] == [("5", 0), ("5", 1), ("6", 0)]
    scores = multiple_choice.score_mc(asked, ["A", "A", "A"])
    assert scores["categories"]["color"]["accuracy"] == 0.0 and scores["categories"]["shape"]["accuracy"] == 1.0
    assert len(multiple_choice.read_mc(path, limit=1)) == 2  # a base question and its copy


def test_mc_reads_seed_bench_layout(tmp_path):
    seed = {
        "questions": [
            {
                "question_id": "101_0",
                "data_id": "x.png",
                "question": "What is it?",
                "choice_a": "cat",
                "choice_b": "dog",
                "choice_c": "cow",
                "choice_d": "pig",
                "answer": "C",
                "question_type_id": 3,
            }
        ]
    }
    (tmp_path / "seed.json").write_text(json.dumps(seed, indent=1))
    (q,) = multiple_choice.read_mc(tmp_path / "seed.json")
    assert (q["index"], q["image"], q["options"], q["answer"], q["category"]) == (
        "101_0",
        "x.png",
        ["cat", "dog", "cow", "pig"],
        "C",
        "3",
    )
    asked = multiple_choice.expand([q], circular=True)
    assert multiple_choice.score_mc(asked, ["cow", "B", "A", "D"])["accuracy"] == 1.0


def test_mc_errors_name_file_and_line(tmp_path):
    rows = mc_rows()
    rows[1]["answer"] = "E"
    with pytest.raises(common.FormatError, match=r"mc\.jsonl:2: answer 'E' is not one of the options"):
        multiple_choice.read_mc(write_jsonl(tmp_path / "mc.jsonl", rows))
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\tquestion\tA\tB\tanswer\timage\n0\tq?\tx\ty\tA\n")
    with pytest.raises(common.FormatError, match=r"bad\.tsv:2: 5 fields, but the header has 6"):
        multiple_choice.read_mc(bad)
    q = multiple_choice.read_mc(write_jsonl(tmp_path / "mc.jsonl", mc_rows()))[0]
    with pytest.raises(FileNotFoundError, match=r"mc\.jsonl:1: image 'x.png' is neither a file"):
        common.load_image_field(q["image"], q["roots"], q["where"])


def test_cli_mc_on_the_shipped_file(model_dir, tmp_path, capsys):
    out = tmp_path / "mc.jsonl"
    rc = cli.main(
        [
            "eval",
            "mc",
            "--limit",
            "2",
            "--circular",
            "--max-new-tokens",
            "2",
            "--answers-out",
            str(out),
            "--model",
            str(model_dir),
        ]
    )
    assert rc == 0
    assert "Multiple choice, circular" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["rotation"] for r in rows] == [0, 1, 2, 3] * 2
    assert rows[0]["prompt"].endswith("Answer with the option's letter from the given choices directly.")
    # images as files under --images
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    Image.new("RGB", (64, 64), (255, 255, 255)).save(img_dir / "x.png")
    rc = cli.main(
        [
            "eval",
            "mc",
            "--data",
            str(write_jsonl(tmp_path / "q.jsonl", mc_rows())),
            "--images",
            str(img_dir),
            "--max-new-tokens",
            "2",
            "--model",
            str(model_dir),
        ]
    )
    assert rc == 0 and "overall" in capsys.readouterr().out


# ---- shipped files ------------------------------------------------------------------------------------------


def test_shipped_files_are_what_the_writers_produce(tmp_path):
    assert sum(p.stat().st_size for p in assets.ASSETS_DIR.rglob("*") if p.is_file()) < 1_000_000
    meta = assets.write_shapes_metadata(tmp_path / "m.jsonl")
    assert meta.read_text() == assets.SHAPES_METADATA.read_text()
    assert len(geneval.read_prompts(meta)) == 120
    assets.write_shapes_pope(tmp_path / "pope")
    assets.write_shapes_mme(tmp_path / "mme")
    for split in ("random", "popular", "adversarial"):
        shipped = pope.read_pope(assets.SHAPES_POPE / f"{split}.json")
        assert len(shipped) == 100 and sum(q["label"] == "yes" for q in shipped) == 50
        assert (tmp_path / "pope" / f"{split}.json").read_text() == (assets.SHAPES_POPE / f"{split}.json").read_text()
    assert (tmp_path / "mme" / "questions.jsonl").read_text() == (assets.SHAPES_MME / "questions.jsonl").read_text()
    for ours, shipped in (
        (tmp_path / "pope" / "images", assets.SHAPES_POPE / "images"),
        (tmp_path / "mme" / "images", assets.SHAPES_MME / "images"),
    ):
        names = sorted(p.name for p in shipped.iterdir())
        assert names == sorted(p.name for p in ours.iterdir())
        for n in names:
            np.testing.assert_array_equal(pixels(ours / n), pixels(shipped / n))
    mc = multiple_choice.read_mc(assets.write_shapes_mc(tmp_path / "mc.tsv"))
    shipped_mc = multiple_choice.read_mc(assets.SHAPES_MC)
    assert len(shipped_mc) == 60
    for a, b in zip(mc, shipped_mc):
        assert {k: v for k, v in a.items() if k not in ("image", "roots", "where")} == {
            k: v for k, v in b.items() if k not in ("image", "roots", "where")
        }
        np.testing.assert_array_equal(
            np.asarray(Image.open(io.BytesIO(base64.b64decode(a["image"])))),
            np.asarray(Image.open(io.BytesIO(base64.b64decode(b["image"])))),
        )


def test_shipped_mc_answers_are_true(tmp_path):
    """The gold option of every shipped question is right about its image (checked with the exact detector)."""
    from harmon.world import detect_objects

    for q in multiple_choice.read_mc(assets.SHAPES_MC):
        image = common.decode_base64_image(q["image"])
        objs = detect_objects(image)
        gold = q["options"]["ABCD".index(q["answer"])]
        if q["category"] == "color":
            shape = q["question"].split()[-1].rstrip("?")
            assert [o.color for o in objs if o.shape == shape] == [gold.lower()]
        elif q["category"] == "counting":
            word = q["question"].split()[2]
            n = len(objs) if word == "objects" else sum(o.shape + "s" == word for o in objs)
            assert int(gold) == n
        else:
            assert tuple(gold.split()) in {(o.color, o.shape) for o in objs}
            for other in q["options"]:
                if other != gold:
                    assert tuple(other.split()) not in {(o.color, o.shape) for o in objs}


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "a" / "00000.png"
    common.save_image_atomic(Image.new("RGB", (4, 4)), target)
    old = target.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(common.os, "replace", boom)
    with pytest.raises(OSError):
        common.save_image_atomic(Image.new("RGB", (4, 4), (255, 0, 0)), target)
    assert target.read_bytes() == old and [p.name for p in target.parent.iterdir()] == ["00000.png"]
    shutil.rmtree(tmp_path / "a")
