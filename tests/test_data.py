"""Tests of the training data layer: formats, processors, bad samples and the mixture loader's layout guarantees."""

from __future__ import annotations

import io
import itertools
import json
import logging
import tarfile

import numpy as np
import pytest
import torch
from helpers import tiny_tokenizer
from PIL import Image

from harmon.data import (
    BadSample,
    Image2TextProcessor,
    JsonlManifest,
    LlavaConversations,
    MixtureLoader,
    OfficialLayout,
    ProceduralSource,
    SourceSpec,
    Text2ImageProcessor,
    WebDatasetShards,
    caption_conversation,
    collate_image2text,
    collate_text2image,
    expand_braces,
    records,
)
from harmon.model import IGNORE_INDEX, IMAGE_PLACEHOLDER
from harmon.prompts import BRIEF_CAPTION_INSTRUCTIONS, DETAILED_CAPTION_INSTRUCTIONS, GENERATE_PREFIX, chat

TAIL = "<|im_end|>\n<|im_start|>assistant\n"


# ---------------------------------------------------------------------------------------------------------------
# fixtures
def gradient_image(size: tuple[int, int] = (24, 16), seed: int = 0) -> Image.Image:
    """A non-uniform RGB image (so crops and resizes are visible), (w, h) = size."""
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = (np.arange(w) * 255 // max(w - 1, 1))[None, :]
    arr[..., 1] = (np.arange(h) * 255 // max(h - 1, 1))[:, None]
    arr[..., 2] = (seed * 37) % 256
    return Image.fromarray(arr, mode="RGB")


def save_image(path, size=(24, 16), seed: int = 0, fmt: str | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    gradient_image(size, seed).save(path, format=fmt)
    return path


def image_bytes(size=(24, 16), seed: int = 0, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    gradient_image(size, seed).save(buf, format=fmt)
    return buf.getvalue()


def write_shard(path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards(tmp_path):
    """Two shards of 6 samples each: jpg + txt, and png + json."""
    write_shard(
        tmp_path / "shard-000.tar",
        [(f"{i:06d}", {"jpg": image_bytes(seed=i, fmt="JPEG"), "txt": f"caption {i}".encode()}) for i in range(6)],
    )
    write_shard(
        tmp_path / "shard-001.tar",
        [
            (f"{i:06d}", {"png": image_bytes(seed=i), "json": json.dumps({"caption": f"caption {i}"}).encode()})
            for i in range(6, 12)
        ],
    )
    return str(tmp_path / "shard-{000..001}.tar")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def t2i_record(i: int) -> dict:
    if i == 3:  # one bad index: too small
        return {"image": gradient_image((4, 4)), "caption": "tiny"}
    return {"image": gradient_image((20 + 4 * (i % 3), 16), seed=i), "caption": f"a red circle number {i}"}


def i2t_record(i: int) -> dict:
    return {
        "image": gradient_image((16, 20), seed=i),
        "conversation": caption_conversation(f"there are {i} circles", "How many circles are there?"),
    }


def map_sources(tok) -> list[SourceSpec]:
    return [
        SourceSpec("text2image", ProceduralSource(t2i_record, 7), Text2ImageProcessor(tok, 8), batch_size=3),
        SourceSpec(
            "image2text",
            ProceduralSource(i2t_record, 5, kind="image2text"),
            Image2TextProcessor(tok, 16, image_tokens=5, max_text_length=64),
            batch_size=1,
        ),
    ]


def take(loader, n: int) -> list[dict]:
    return list(itertools.islice(iter(loader), n))


def assert_same_batch(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, sub in a.items():
        assert sub.keys() == b[name].keys()
        for k, x in sub.items():
            y = b[name][k]
            assert (x is None and y is None) or torch.equal(x, y), (name, k)


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


# ---------------------------------------------------------------------------------------------------------------
# bad samples in the loader
def test_bad_samples_are_skipped_counted_and_bounded(tmp_path, tok, caplog):
    save_image(tmp_path / "good.png", size=(24, 24))
    save_image(tmp_path / "tiny.png", size=(4, 4))
    save_image(tmp_path / "thin.png", size=(400, 30))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
    lines = [
        {"image": "good.png", "caption": "a red circle"},
        {"image": "missing.png", "caption": "x"},
        {"image": "corrupt.png", "caption": "x"},
        {"image": "tiny.png", "caption": "x"},
        {"image": "thin.png", "caption": "x"},
        {"image": "good.png", "caption": "word " * 300},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    manifest = JsonlManifest(tmp_path / "m.jsonl", kind="image2text")
    spec = SourceSpec(
        "image2text", manifest, Image2TextProcessor(tok, 16, image_tokens=4, max_text_length=200), batch_size=2
    )
    loader = MixtureLoader([spec], seed=0)
    with caplog.at_level(logging.WARNING, logger="harmon.data.mixture"):
        batches = take(loader, 20)
    assert all(b["image2text"]["input_ids"].shape[0] == 2 for b in batches)
    assert set(loader.skipped["image2text"]) == {
        records.MISSING_FILE,
        records.UNREADABLE_IMAGE,
        records.IMAGE_TOO_SMALL,
        records.EXTREME_ASPECT,
        records.TEXT_TOO_LONG,
    }
    assert sum(loader.skipped["image2text"].values()) > 20
    warned = [r for r in caplog.records if "skipping bad samples" in r.getMessage()]
    assert len(warned) == 5  # once per reason

    (tmp_path / "bad.jsonl").write_text("\n".join(json.dumps(x) for x in lines[1:5]))  # only broken lines
    spec = SourceSpec("text2image", JsonlManifest(tmp_path / "bad.jsonl"), Text2ImageProcessor(tok, 8), batch_size=1)
    with pytest.raises(RuntimeError, match="text2image"):
        take(MixtureLoader([spec], seed=0, max_tries=8), 1)


# ---------------------------------------------------------------------------------------------------------------
# the mixture's layout guarantees
def test_two_ranks_equal_one_process_with_accumulation(tok):
    single = take(MixtureLoader(map_sources(tok), seed=5, accum_steps=2), 8)  # 4 steps x 2 micro-batches
    ranks = [take(MixtureLoader(map_sources(tok), seed=5, rank=r, world_size=2), 4) for r in range(2)]
    for step in range(4):
        for g in range(2):
            assert_same_batch(single[2 * step + g], ranks[g][step])
    one = MixtureLoader(map_sources(tok), seed=5, accum_steps=2)
    two = [MixtureLoader(map_sources(tok), seed=5, rank=r, world_size=2) for r in range(2)]
    assert one.batch_seed(3, 1) == two[1].batch_seed(3, 0) != two[0].batch_seed(3, 0)
    batch = single[0]
    assert batch["text2image"]["pixels"].shape == (3, 3, 8, 8)
    assert batch["image2text"]["pixels"].shape == (1, 3, 16, 16)


def test_resume_equals_uninterrupted_run(tok, shards):
    def sources():
        return map_sources(tok) + [
            SourceSpec("text2image_web", WebDatasetShards(shards, seed=1), Text2ImageProcessor(tok, 8), batch_size=2)
        ]

    full = take(MixtureLoader(sources(), seed=3, accum_steps=2), 12)  # steps 0..5
    from_step = take(MixtureLoader(map_sources(tok), seed=3, accum_steps=2, start_step=3), 6)
    for a, b in zip(from_step, full[6:]):
        assert_same_batch(a, {k: v for k, v in b.items() if k != "text2image_web"})

    first = MixtureLoader(sources(), seed=3, accum_steps=2)
    take(first, 6)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON round trip
    assert state["step"] == 3 and state["micro"] == 0
    resumed = MixtureLoader(sources(), seed=3, accum_steps=2)
    resumed.load_state_dict(state)
    assert resumed.skipped == first.skipped
    for a, b in zip(take(resumed, 6), full[6:]):
        assert_same_batch(a, b)


def test_workers_give_the_same_batches(tok, shards):
    reference = take(MixtureLoader(map_sources(tok), seed=7, accum_steps=2), 6)
    rng_state = torch.get_rng_state()
    loader = MixtureLoader(map_sources(tok), seed=7, accum_steps=2, num_workers=2)
    for a, b in zip(take(loader, 6), reference):
        assert_same_batch(a, b)
    assert loader.skipped == {"text2image": {records.IMAGE_TOO_SMALL: 2}, "image2text": {}}  # index 3, twice
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is untouched
    loader.close()

    # streamed source with workers: resuming from a state taken mid-run reproduces the rest
    def sources():
        return [SourceSpec("text2image_web", WebDatasetShards(shards), Text2ImageProcessor(tok, 8), batch_size=2)]

    run = MixtureLoader(sources(), seed=7, num_workers=2)
    full = take(run, 7)
    run.close()
    part = MixtureLoader(sources(), seed=7, num_workers=2)
    take(part, 3)
    state = part.state_dict()
    part.close()
    resumed = MixtureLoader(sources(), seed=7, num_workers=2)
    resumed.load_state_dict(state)
    for a, b in zip(take(resumed, 4), full[3:]):
        assert_same_batch(a, b)
    resumed.close()


def test_shards_split_across_ranks_and_workers_without_overlap(tok, shards):
    def key_id(record, generator):  # the sample's identity as its only token
        key = record["key"].split("/")[1]
        return {"pixels": torch.zeros(3, 2, 2), "input_ids": torch.tensor([int(key)])}

    def loader(rank: int) -> MixtureLoader:
        spec = SourceSpec("text2image", WebDatasetShards(shards, seed=0), key_id, batch_size=1, pad_id=0)
        return MixtureLoader([spec], seed=0, rank=rank, world_size=2, num_workers=2)

    seen, merged = [], {}
    for rank in range(2):
        ld = loader(rank)
        seen += [b["text2image"]["input_ids"].item() for b in take(ld, 6)]  # 4 slots x 3 samples = one pass
        positions = ld.state_dict()["positions"]["text2image"]
        assert positions == {str(2 * rank): [0, 3], str(2 * rank + 1): [0, 3]}  # this rank's slots only
        merged.update(positions)
        ld.close()
    assert sorted(seen) == list(range(12))
    again = loader(1)
    again.load_state_dict({"step": 6, "positions": {"text2image": merged}, "slots": 4})
    assert again.state_dict()["positions"]["text2image"] == {"2": [0, 3], "3": [0, 3]}
