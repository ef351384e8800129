"""MME and multiple-choice runners in their benchmarks' own formats, and the shipped shapes-world files."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import harmon_eval, pixels
from PIL import Image

from harmon.eval import common, geneval, mme, multiple_choice, pope
from harmon.world import assets


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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
    rc = harmon_eval("mme", model_dir, "--limit", "1", "--max-new-tokens", "3", "--answers-out", str(tmp_path / "r"))
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
    rc = harmon_eval("mc", model_dir, "--limit", "2", "--circular", "--max-new-tokens", "2", "--answers-out", str(out))
    assert rc == 0
    assert "Multiple choice, circular" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["rotation"] for r in rows] == [0, 1, 2, 3] * 2
    assert rows[0]["prompt"].endswith("Answer with the option's letter from the given choices directly.")
    # images as files under --images
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    Image.new("RGB", (64, 64), (255, 255, 255)).save(img_dir / "x.png")
    rc = harmon_eval(
        "mc",
        model_dir,
        "--data",
        str(write_jsonl(tmp_path / "q.jsonl", mc_rows())),
        "--images",
        str(img_dir),
        "--max-new-tokens",
        "2",
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
