"""Tests of the mixture loader: tasks on batches, bad samples, and the layout guarantees (ranks, resume, workers)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from data_helpers import (
    assert_same_batch,
    i2t_record,
    map_sources,
    save_image,
    t2i_record,
    take,
)

from harmon.data import (
    Image2TextProcessor,
    JsonlManifest,
    MixtureLoader,
    ProceduralSource,
    SourceSpec,
    Task,
    Text2ImageProcessor,
    WebDatasetShards,
    records,
)


def test_batches_carry_their_task_and_names_are_free_labels(tok):
    sources = [
        SourceSpec("pictures", "text2image", ProceduralSource(t2i_record, 7), Text2ImageProcessor(tok, 8), 2),
        SourceSpec(
            "chat",
            Task.TEXT_ONLY,
            ProceduralSource(
                lambda i: {"image": None, "conversation": i2t_record(i)["conversation"][1:]}, 4, kind="image2text"
            ),
            Image2TextProcessor(tok, 16, image_tokens=5, max_text_length=64, require_image=False),
            1,
        ),
    ]
    batch = take(MixtureLoader(sources, seed=0), 1)[0]
    assert batch["pictures"]["task"] is Task.TEXT_TO_IMAGE and batch["pictures"]["pixels"].shape == (2, 3, 8, 8)
    assert batch["chat"]["task"] is Task.TEXT_ONLY and batch["chat"]["pixels"] is None
    with pytest.raises(ValueError, match="task image2text reads image2text records, the dataset holds text2image"):
        SourceSpec("x", Task.IMAGE_TO_TEXT, ProceduralSource(t2i_record, 7), Text2ImageProcessor(tok, 8), 1)
    with pytest.raises(ValueError, match="source 'x': unknown task"):
        SourceSpec("x", "t2i", ProceduralSource(t2i_record, 7), Text2ImageProcessor(tok, 8), 1)


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
        "image2text",
        Task.IMAGE_TO_TEXT,
        manifest,
        Image2TextProcessor(tok, 16, image_tokens=4, max_text_length=200),
        batch_size=2,
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
    spec = SourceSpec(
        "text2image",
        Task.TEXT_TO_IMAGE,
        JsonlManifest(tmp_path / "bad.jsonl"),
        Text2ImageProcessor(tok, 8),
        batch_size=1,
    )
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
            SourceSpec(
                "text2image_web",
                Task.TEXT_TO_IMAGE,
                WebDatasetShards(shards, seed=1),
                Text2ImageProcessor(tok, 8),
                batch_size=2,
            )
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
        web = WebDatasetShards(shards)
        return [SourceSpec("text2image_web", Task.TEXT_TO_IMAGE, web, Text2ImageProcessor(tok, 8), batch_size=2)]

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
        web = WebDatasetShards(shards, seed=0)
        spec = SourceSpec("text2image", Task.TEXT_TO_IMAGE, web, key_id, batch_size=1, pad_id=0)
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
