"""Tests of the training data layer: formats, tasks and processors (the mixture loader: test_mixture.py)."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch
from data_helpers import (
    gradient_image,
    i2t_record,
    image_bytes,
    save_image,
    t2i_record,
    write_shard,
)

from harmon.data import (
    BadSample,
    CaptionView,
    Image2TextProcessor,
    JsonlManifest,
    LlavaConversations,
    OfficialLayout,
    ProceduralSource,
    Task,
    Text2ImageProcessor,
    WebDatasetShards,
    collate_image2text,
    collate_text2image,
    expand_braces,
    records,
)
from harmon.data.tasks import parse_task
from harmon.model import IGNORE_INDEX, IMAGE_PLACEHOLDER
from harmon.prompts import BRIEF_CAPTION_INSTRUCTIONS, DETAILED_CAPTION_INSTRUCTIONS, GENERATE_PREFIX, chat

TAIL = "<|im_end|>\n<|im_start|>assistant\n"


# ---------------------------------------------------------------------------------------------------------------
# formats
def test_official_layout(tmp_path):
    for i in range(3):
        save_image(tmp_path / "img" / f"{i}.png", seed=i)
        (tmp_path / "ann").mkdir(exist_ok=True)
        (tmp_path / "ann" / f"{i}.json").write_text(json.dumps({"caption": f"caption {i}", "other": "x"}))
    (tmp_path / "ann" / "bad.json").write_text("{'caption': 'single quotes'}")  # quirk 23: not JSON
    entries = [{"image": f"{i}.png", "annotation": f"{i}.json"} for i in range(3)]
    entries += [{"image": "0.png", "annotation": "missing.json"}, {"image": "1.png", "annotation": "bad.json"}]
    (tmp_path / "data_info.json").write_text(json.dumps(entries))

    src = OfficialLayout(tmp_path / "data_info.json", tmp_path / "img", cap_folder=tmp_path / "ann")
    assert len(src) == 5
    assert src.record(1) == {"kind": "text2image", "image": tmp_path / "img" / "1.png", "caption": "caption 1"}
    with pytest.raises(BadSample) as err:
        src.record(3)
    assert err.value.reason == records.MISSING_FILE
    with pytest.raises(BadSample) as err:
        src.record(4)
    assert err.value.reason == records.MALFORMED

    cap = OfficialLayout(tmp_path / "data_info.json", tmp_path / "img", tmp_path / "ann", kind="image2text")
    rec = cap.record(2)
    user, assistant = rec["conversation"]
    assert user["role"] == "user" and user["content"].startswith("<image>\n")
    assert user["content"][len("<image>\n") :] in DETAILED_CAPTION_INSTRUCTIONS
    assert assistant == {"role": "assistant", "content": "caption 2"}
    assert cap.record(2) == rec  # deterministic in (seed, index)
    brief = OfficialLayout(
        tmp_path / "data_info.json", tmp_path / "img", tmp_path / "ann", kind="image2text", instructions="brief"
    )
    assert brief.record(0)["conversation"][0]["content"][len("<image>\n") :] in BRIEF_CAPTION_INSTRUCTIONS

    # a folder of list files, concatenated in name order
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "b.json").write_text(json.dumps(entries[2:3]))
    (tmp_path / "lists" / "a.json").write_text(json.dumps(entries[:2]))
    folder = OfficialLayout(tmp_path / "lists", tmp_path / "img", tmp_path / "ann")
    assert [folder.record(i)["caption"] for i in range(3)] == ["caption 0", "caption 1", "caption 2"]


def test_jsonl_manifest(tmp_path):
    save_image(tmp_path / "images" / "a.png")
    lines = [{"image": "images/a.png", "caption": "a red circle"}, {"image": "/abs/b.png", "caption": "b"}]
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n{not json\n")
    src = JsonlManifest(path)
    assert src.kind == "text2image" and len(src) == 3
    assert src.record(0) == {"kind": "text2image", "image": tmp_path / "images" / "a.png", "caption": "a red circle"}
    assert src.record(1)["image"].as_posix() == "/abs/b.png"
    with pytest.raises(BadSample):
        src.record(2)
    assert JsonlManifest(path, image_root=tmp_path / "images").record(0)["image"] == tmp_path / "images/images/a.png"
    as_captions = JsonlManifest(path, kind="image2text")
    conv = as_captions.record(0)["conversation"]
    assert conv[0]["content"].startswith("<image>\n") and conv[1]["content"] == "a red circle"

    chat_path = tmp_path / "chat.jsonl"
    chat_path.write_text(
        "\n".join(
            json.dumps(x)
            for x in [
                {
                    "image": "images/a.png",
                    "conversations": [{"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "A circle."}],
                },
                {"conversation": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
            ]
        )
    )
    conv_src = JsonlManifest(chat_path)
    assert conv_src.kind == "image2text"
    rec = conv_src.record(0)
    assert rec["conversation"][0] == {"role": "user", "content": "<image>\nWhat is it?"}  # image mark added
    assert conv_src.record(1)["image"] is None


def test_llava_conversations(tmp_path, tok):
    save_image(tmp_path / "coco" / "1.jpg", size=(40, 30), fmt="JPEG")
    data = [
        {
            "id": "multi",
            "image": "coco/1.jpg",
            "conversations": [
                {"from": "human", "value": "Look at this: <image>\nWhat colour is the circle?"},
                {"from": "gpt", "value": "Red."},
                {"from": "human", "value": "And how many are there?"},
                {"from": "gpt", "value": "Two."},
            ],
        },
        {"id": "text", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]},
        {
            "id": "nomark",
            "image": "coco/1.jpg",
            "conversations": [{"from": "human", "value": "Describe."}, {"from": "gpt", "value": "Shapes."}],
        },
    ]
    (tmp_path / "llava.json").write_text(json.dumps(data))
    src = LlavaConversations(tmp_path / "llava.json")
    assert len(src) == 3
    multi = src.record(0)
    assert multi["image"] == tmp_path / "coco" / "1.jpg"
    assert [t["role"] for t in multi["conversation"]] == ["user", "assistant", "user", "assistant"]
    assert multi["conversation"][0]["content"] == "Look at this: <image>\nWhat colour is the circle?"
    assert src.record(1)["image"] is None
    assert src.record(2)["conversation"][0]["content"] == "<image>\nDescribe."
    assert len(LlavaConversations(tmp_path / "llava.json", with_image=True)) == 2
    text_only = LlavaConversations(tmp_path / "llava.json", with_image=False)
    assert len(text_only) == 1 and text_only.record(0)["conversation"][1]["content"] == "Hi."

    proc = Image2TextProcessor(tok, 16, image_tokens=7, max_text_length=128)
    out = proc(multi)
    assert out["pixels"].shape == (3, 16, 16)
    assert int((out["input_ids"] == IMAGE_PLACEHOLDER).sum()) == 7
    supervised = out["input_ids"][out["labels"] != IGNORE_INDEX]
    assert tok.decode(supervised) == "Red.<|im_end|>Two.<|im_end|>"


def test_webdataset_shards_split_and_resume(shards):
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}/{1..2}") == ["a/1", "a/2", "b/1", "b/2"]
    src = WebDatasetShards(shards, seed=0)
    assert len(src.shards) == 2
    all_keys = {f"shard-000.tar/{i:06d}" for i in range(6)} | {f"shard-001.tar/{i:06d}" for i in range(6, 12)}
    for num_slots in (1, 2, 4):  # 4 slots > 2 shards: split by sample index instead
        per_slot = [[r["key"] for r in src.iter_pass(0, slot, num_slots)] for slot in range(num_slots)]
        flat = [k for keys in per_slot for k in keys]
        assert len(flat) == len(set(flat)) == 12 and set(flat) == all_keys
        assert {len(keys) for keys in per_slot} == {12 // num_slots}
    rec = next(src.open_stream(0, 1))
    assert rec["caption"] in {f"caption {i}" for i in range(12)} and isinstance(rec["image"], bytes)

    # endless, position = (pass, consumed), and resumable from any position
    stream = src.open_stream(1, 2)
    first = [next(stream)["key"] for _ in range(14)]
    assert stream.position == (2, 2)
    for one_pass in (first[:6], first[6:12]):  # a slot reads whole shards (one here), in a per-pass order
        assert len({k.split("/")[0] for k in one_pass}) == 1
    resumed = src.open_stream(1, 2, position=(1, 4))
    assert [next(resumed)["key"] for _ in range(4)] == first[10:14]
    orders = {tuple(src.shard_order(p)) for p in range(8)}
    assert orders == {(0, 1), (1, 0)}  # shuffled per pass


def test_webdataset_bad_samples_raise_and_move_on(tmp_path):
    write_shard(
        tmp_path / "a.tar",
        [
            ("0", {"jpg": image_bytes(fmt="JPEG"), "txt": b"ok"}),
            ("1", {"txt": b"no image"}),
            ("2", {"jpg": image_bytes(fmt="JPEG"), "txt": b"ok again"}),
        ],
    )
    stream = WebDatasetShards([str(tmp_path / "a.tar")]).open_stream(0, 1)
    assert next(stream)["caption"] == "ok"
    with pytest.raises(BadSample):
        next(stream)
    assert next(stream)["caption"] == "ok again"

    with tarfile.open(tmp_path / "a.tar") as tar:
        cut = tar.getmember("2.jpg").offset_data + 100
    (tmp_path / "cut.tar").write_bytes((tmp_path / "a.tar").read_bytes()[:cut])  # truncated inside an image
    stream = WebDatasetShards([str(tmp_path / "cut.tar")]).open_stream(0, 1)
    items = []
    for _ in range(4):
        try:
            items.append(next(stream)["caption"])
        except BadSample as err:
            items.append(err.reason)
    assert items == ["ok", records.MALFORMED, records.UNREADABLE_SHARD, "ok"]  # then the next pass
    with pytest.raises(FileNotFoundError):
        WebDatasetShards(str(tmp_path / "missing-{0..1}.tar"))


def test_procedural_source():
    src = ProceduralSource(t2i_record, 7)
    assert len(src) == 7 and src.record(1)["kind"] == "text2image" and not src.unbounded
    endless = ProceduralSource(i2t_record, kind="image2text")
    assert endless.unbounded and endless.record(10**9)["kind"] == "image2text"
    with pytest.raises(TypeError):
        len(endless)
    with pytest.raises(ValueError):
        ProceduralSource(lambda i: {"kind": "text2image", **t2i_record(i)}, kind="image2text").record(0)


def test_caption_view_serves_pairs_as_captioning_conversations(shards):
    view = CaptionView(ProceduralSource(t2i_record, 7), seed=2, instructions="brief")
    rec = view.record(1)
    assert view.kind == "image2text" and len(view) == 7 and not view.unbounded
    assert rec["kind"] == "image2text" and rec["image"] == t2i_record(1)["image"]
    user, answer = rec["conversation"]
    assert user["content"].startswith("<image>\n") and user["content"][len("<image>\n") :] in BRIEF_CAPTION_INSTRUCTIONS
    assert answer == {"role": "assistant", "content": "a red circle number 1"}
    assert view.record(1) == rec  # the instruction is fixed by (seed, index)
    streamed = CaptionView(WebDatasetShards(shards, seed=0), seed=2)
    stream = streamed.open_stream(0, 1)
    rec = next(stream)
    assert stream.position == (0, 1) and rec["conversation"][1]["content"].startswith("caption ")
    assert rec["conversation"][0]["content"][len("<image>\n") :] in DETAILED_CAPTION_INSTRUCTIONS


def test_tasks_parse_and_name_their_record_layouts():
    assert parse_task("text_only", "source 'x'") is Task.TEXT_ONLY and Task("image2text") is Task.IMAGE_TO_TEXT
    assert json.dumps({"task": Task.TEXT_TO_IMAGE}) == '{"task": "text2image"}'
    assert Task.TEXT_ONLY.record_kind == "image2text" and Task.TEXT_TO_IMAGE.record_kind == "text2image"
    assert Task.IMAGE_EDIT.record_kind == "image_edit" and Task.RECONSTRUCTION.record_kind == "text2image"
    assert parse_task("reconstruction", "source 'x'").image_conditioned and not Task.TEXT_TO_IMAGE.image_conditioned
    with pytest.raises(ValueError, match=r"source 'x': set a task \(one of text2image, image2text, text_only, image_"):
        parse_task(None, "source 'x'")
    with pytest.raises(ValueError, match=r"source 'x': unknown task 'qa' \(one of text2image, image2text"):
        parse_task("qa", "source 'x'")


# ---------------------------------------------------------------------------------------------------------------
# processors
def test_text2image_processor(tok):
    proc = Text2ImageProcessor(tok, 16, cfg_drop_prob=0.0)
    rec = {"kind": "text2image", "image": gradient_image((40, 20)), "caption": "  a red circle  "}
    out = proc(rec, torch.Generator().manual_seed(0))
    assert out["pixels"].shape == (3, 16, 16) and out["pixels"].dtype == torch.float32
    assert out["pixels"].min() >= -1.0 and out["pixels"].max() <= 1.0
    assert out["input_ids"].dtype == torch.long and out["input_ids"].ndim == 1
    assert tok.decode(out["input_ids"]) == chat(GENERATE_PREFIX + "a red circle")
    assert out["input_ids"].tolist() == tok(chat(GENERATE_PREFIX + "a red circle"), add_special_tokens=False).input_ids
    again = proc(rec, torch.Generator().manual_seed(0))
    assert torch.equal(out["pixels"], again["pixels"])
    crops = {proc(rec, torch.Generator().manual_seed(s))["pixels"][0, 0, 0].item() for s in range(20)}
    assert len(crops) > 1  # random crop offsets
    center = Text2ImageProcessor(tok, 16, crop="center")(rec)["pixels"]
    stretch = Text2ImageProcessor(tok, 16, crop="stretch")(rec)["pixels"]
    assert not torch.equal(center, stretch)
    with pytest.raises(ValueError):
        Text2ImageProcessor(tok, 16, max_length=5)  # cannot hold the template


def test_caption_truncation_keeps_template_tail(tok):
    proc = Text2ImageProcessor(tok, 8, max_length=40, cfg_drop_prob=0.0)
    caption = " ".join(f"word{i}" for i in range(100))
    ids = proc({"image": gradient_image(), "caption": caption})["input_ids"]
    assert len(ids) == 40
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>user\n" + GENERATE_PREFIX + "word0 word1")
    assert text.endswith(TAIL) and "word99" not in text


def test_cfg_drop_rate_and_determinism(tok):
    proc = Text2ImageProcessor(tok, 8, cfg_drop_prob=0.1)
    rec = {"image": gradient_image((8, 8)), "caption": "a red circle"}
    uncond = chat("Generate an image.")

    def dropped(seed: int) -> bool:
        return tok.decode(proc(rec, torch.Generator().manual_seed(seed))["input_ids"]) == uncond

    flags = [dropped(s) for s in range(1500)]
    assert 0.08 < sum(flags) / len(flags) < 0.12
    assert [dropped(s) for s in range(50)] == flags[:50]


def test_image2text_processor_layout(tok):
    proc = Image2TextProcessor(tok, 16, image_tokens=6, max_text_length=64)
    conv = [{"role": "user", "content": "<image>\nHow many circles?"}, {"role": "assistant", "content": "Two."}]
    out = proc({"kind": "image2text", "image": gradient_image((30, 20)), "conversation": conv})
    ids, labels = out["input_ids"], out["labels"]
    slots = (ids == IMAGE_PLACEHOLDER).nonzero().flatten()
    assert len(slots) == 6 and torch.equal(slots, torch.arange(slots[0], slots[0] + 6))
    before = tok.decode(ids[: slots[0]])
    after = tok.decode(ids[slots[-1] + 1 :])
    assert before == "<|im_start|>user\n"
    assert after == "\nHow many circles?<|im_end|>\n<|im_start|>assistant\nTwo.<|im_end|>\n"
    question = tok("\nHow many circles?" + TAIL, add_special_tokens=False).input_ids  # as the pipeline does
    assert ids[slots[-1] + 1 : slots[-1] + 1 + len(question)].tolist() == question
    sup = (labels != IGNORE_INDEX).nonzero().flatten()
    assert torch.equal(labels[sup], ids[sup]) and tok.decode(ids[sup]) == "Two.<|im_end|>"
    assert sup[-1] == len(ids) - 2 and labels[-1] == IGNORE_INDEX  # the "\n" after <|im_end|> is not supervised
    assert tok.decode(ids[-1:]) == "\n"
    # pad to a gray square: corners of a wide image are gray
    assert torch.allclose(out["pixels"][:, 0, 0], torch.full((3,), 127 / 255 * 2 - 1), atol=0.05)

    text_only = {
        "kind": "image2text",
        "image": None,
        "conversation": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    }
    with pytest.raises(BadSample) as err:
        proc(text_only)
    assert err.value.reason == records.NO_IMAGE
    out = Image2TextProcessor(tok, 16, image_tokens=6, require_image=False)(text_only)
    assert out["pixels"] is None and IMAGE_PLACEHOLDER not in out["input_ids"].tolist()

    two = [{"role": "user", "content": "<image> and <image>"}, {"role": "assistant", "content": "x"}]
    with pytest.raises(BadSample) as err:
        proc({"image": gradient_image((20, 20)), "conversation": two})
    assert err.value.reason == records.SEVERAL_IMAGES
    long = [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "word " * 200}]
    with pytest.raises(BadSample) as err:
        proc({"image": gradient_image((20, 20)), "conversation": long})
    assert err.value.reason == records.TEXT_TOO_LONG


def test_collate(tok):
    t2i = Text2ImageProcessor(tok, 8, cfg_drop_prob=0.0)
    samples = [t2i({"image": gradient_image(), "caption": c}) for c in ("a", "a red circle to the left")]
    batch = collate_text2image(samples, pad_id=tok.pad_token_id)
    assert batch["pixels"].shape == (2, 3, 8, 8)
    n0, n1 = len(samples[0]["input_ids"]), len(samples[1]["input_ids"])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, n1)
    assert batch["attention_mask"].dtype == torch.bool and batch["attention_mask"][0].sum() == n0
    assert (batch["input_ids"][0, n0:] == tok.pad_token_id).all()

    i2t = Image2TextProcessor(tok, 8, image_tokens=3, require_image=None)
    with_image = i2t(
        {
            "image": gradient_image(),
            "conversation": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a b c"}],
        }
    )
    text_only = i2t(
        {"image": None, "conversation": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    )
    batch = collate_image2text([with_image, with_image], pad_id=0)
    assert batch["pixels"].shape == (2, 3, 8, 8) and batch["labels"].shape == batch["input_ids"].shape
    assert collate_image2text([text_only], pad_id=0)["pixels"] is None
    longer = {
        **text_only,
        "input_ids": torch.cat([text_only["input_ids"]] * 2),
        "labels": torch.cat([text_only["labels"]] * 2),
    }
    batch = collate_image2text([text_only, longer], pad_id=0)
    n = len(text_only["labels"])
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all() and (batch["input_ids"][0, n:] == 0).all()
    assert batch["attention_mask"].sum(dim=1).tolist() == [n, 2 * n]
    with pytest.raises(ValueError):
        collate_image2text([with_image, text_only], pad_id=0)
