"""Image-conditioned training: the image_edit and reconstruction data, their processor, and the reca / edit recipes
(at toy size, and under torchrun with 2 processes)."""

from __future__ import annotations

import json

import pytest
import torch
from data_helpers import gradient_image, image_bytes, save_image, write_shard
from helpers import tiny_tokenizer
from train_helpers import step_losses, torchrun

from harmon.data import BadSample, ImageConditionedProcessor, JsonlManifest, Task, WebDatasetEdits
from harmon.data.conditioned import collate_conditioned
from harmon.pipeline import HarmonPipeline
from harmon.prompts import IMAGE_PLACEHOLDER, RECONSTRUCTION_TEMPLATES, edit_prompt, image_only_prompt
from harmon.tokenizer import USER_TEXT, encode_template
from harmon.train.config import OptimConfig, SourceConfig
from harmon.train.recipes import RECIPES
from harmon.train.trainer import Trainer
from harmon.world.recipes import toy, toy_source

SLOTS = 4 + 8  # a 32 px condition on the tiny model: 2 x 2 tokens and 8 buffers


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    tiny_tokenizer().save_pretrained(str(path))
    return str(path)


def write_edits(root, n: int = 4) -> str:
    """``n`` edit triples as 64 px PNGs under root/img and root/edits.jsonl naming them relative to root."""
    lines = []
    for i in range(n):
        save_image(root / "img" / f"src{i}.png", size=(64, 64), seed=i)
        save_image(root / "img" / f"tgt{i}.png", size=(64, 64), seed=i + 50)
        lines.append({"source": f"img/src{i}.png", "instruction": f"make shape {i} blue", "target": f"img/tgt{i}.png"})
    (root / "edits.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(root / "edits.jsonl")


def processor(task: Task, **kw) -> ImageConditionedProcessor:
    kw = {"cfg_drop_prob": 0.0, "text_drop_prob": 0.0, **kw}
    return ImageConditionedProcessor(tiny_tokenizer(), task, 64, 32, SLOTS, **kw)


def test_edit_records_from_jsonl_and_webdataset(tmp_path):
    manifest = JsonlManifest(write_edits(tmp_path, 2))
    assert manifest.kind == "image_edit" and len(manifest) == 2  # inferred from the first line
    assert manifest.record(1) == {
        "kind": "image_edit",
        "source": tmp_path / "img" / "src1.png",
        "instruction": "make shape 1 blue",
        "target": tmp_path / "img" / "tgt1.png",
    }
    (tmp_path / "bad.jsonl").write_text(json.dumps({"source": "a.png", "instruction": "x"}) + "\n")
    with pytest.raises(BadSample, match="needs a source, a target"):
        JsonlManifest(tmp_path / "bad.jsonl", kind="image_edit").record(0)
    images = JsonlManifest(tmp_path / "bad.jsonl", kind="text2image", captions=False)  # image-only lines
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "a.png"}) + "\n")
    assert images.record(0)["caption"] is None
    write_shard(
        tmp_path / "e.tar",
        [
            ("0", {"src.png": image_bytes(seed=1), "tgt.png": image_bytes(seed=2), "txt": b" recolour it \n"}),
            ("1", {"src.jpg": image_bytes(fmt="JPEG"), "tgt.jpg": image_bytes(fmt="JPEG"), "json": b'{"text": "t"}'}),
            ("2", {"src.png": image_bytes(), "txt": b"no target"}),
        ],
    )
    shards = WebDatasetEdits(str(tmp_path / "e.tar"), shuffle=False)
    got = list(shards.iter_pass(0))  # the sample without a target is left out
    assert [(r["kind"], r["instruction"], r["source"][:4]) for r in got] == [
        ("image_edit", "recolour it", image_bytes(seed=1)[:4]),
        ("image_edit", "t", image_bytes(fmt="JPEG")[:4]),
    ]


def test_edit_samples_match_the_inference_prompt_and_share_one_geometry(tmp_path):
    tok = tiny_tokenizer()
    record = {"kind": "image_edit", "source": gradient_image((96, 64)), "instruction": " make it blue ", "target": None}
    record["target"] = record["source"]
    sample = processor(Task.IMAGE_EDIT, crop="random")(record, torch.Generator().manual_seed(5))
    ids = encode_template(tok, edit_prompt(USER_TEXT), "make it blue")  # what HarmonPipeline.edit encodes
    slot = ids.index(tok.convert_tokens_to_ids("<image>"))
    assert sample["input_ids"].tolist() == ids[:slot] + [IMAGE_PLACEHOLDER] * SLOTS + ids[slot + 1 :]
    assert sample["pixels"].shape == (3, 64, 64) and sample["cond_pixels"].shape == (3, 32, 32)
    # the same random crop of source and target: the 32 px condition is the 64 px target, downscaled
    small = torch.nn.functional.avg_pool2d(sample["pixels"][None], 2)[0]
    assert (small - sample["cond_pixels"]).abs().mean() < 0.05
    batch = collate_conditioned([sample, sample], processor(Task.IMAGE_EDIT).pad_id)
    assert batch["cond_pixels"].shape == (2, 3, 32, 32) and batch["attention_mask"].all()


def test_guidance_drops_and_templates_come_from_the_sample_generator():
    tok = tiny_tokenizer()
    proc = processor(Task.RECONSTRUCTION, cfg_drop_prob=0.2, text_drop_prob=0.3)
    record = {"kind": "text2image", "image": gradient_image((40, 40)), "caption": None}
    image_only = encode_template(tok, image_only_prompt())
    kinds = {"none": 0, "image only": 0, "template": 0}
    templates = set()
    for seed in range(200):
        ids = proc.prompt_ids(record, torch.Generator().manual_seed(seed))
        assert ids == proc.prompt_ids(record, torch.Generator().manual_seed(seed))  # seeded, hence repeatable
        if IMAGE_PLACEHOLDER not in ids:
            kinds["none"] += 1
            continue
        slot = ids.index(IMAGE_PLACEHOLDER)
        text = ids[:slot] + [tok.convert_tokens_to_ids("<image>")] + ids[slot + SLOTS :]
        kinds["image only" if text == image_only else "template"] += 1
        templates.add(tok.decode(text))
    assert 20 <= kinds["none"] <= 60 and 40 <= kinds["image only"] <= 80  # 20 % and 30 % of 200
    assert len(templates) > 30 and len(RECONSTRUCTION_TEMPLATES) >= 50
    sample = processor(Task.RECONSTRUCTION, crop="center")(record)
    small = torch.nn.functional.avg_pool2d(sample["pixels"][None], 2)[0]
    assert (small - sample["cond_pixels"]).abs().mean() < 0.05  # the condition is the target itself


def test_image_conditioned_fields_are_validated_by_name():
    def error(**fields) -> str:
        src = SourceConfig("x", **{"format": "jsonl", "path": "a.jsonl", **fields})
        with pytest.raises(ValueError) as err:
            src.validate()
        return str(err.value)

    assert "apply to image_edit and reconstruction" in error(task=Task.TEXT_TO_IMAGE, text_drop_prob=0.1)
    assert "cfg_drop_prob + text_drop_prob <= 1" in error(task=Task.IMAGE_EDIT, text_drop_prob=0.95)
    assert "cond_image_size must be a positive multiple of 16" in error(task=Task.RECONSTRUCTION, cond_image_size=40)
    assert "format llava serves image2text, text_only, not text2image" in error(
        task=Task.RECONSTRUCTION, format="llava"
    )  # reconstruction reads caption records


def edit_toy(tok_dir: str, out, edits: str, **fields):
    """The edit recipe at toy size: its edit source reads ``edits``, the others become shapes-world sources."""
    cfg = toy(RECIPES["edit"](), tok_dir, str(out))
    cfg.data[0] = SourceConfig(
        "image_edit", "jsonl", edits, task=Task.IMAGE_EDIT, batch_size=2, cfg_drop_prob=0.25, text_drop_prob=0.25
    )
    for key, value in fields.items():
        setattr(cfg, key, value)
    return cfg


def test_edit_recipe_runs_at_toy_size_and_its_export_edits(tok_dir, tmp_path):
    cfg = edit_toy(tok_dir, tmp_path / "run", write_edits(tmp_path))
    cfg.data[0].cond_image_size = 32
    history = Trainer(cfg, device="cpu").run(resume="none")
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert {"loss_image_edit", "loss_text2image"} <= set(history[-1])
    pipe = HarmonPipeline.from_pretrained(tmp_path / "run" / "final", device="cpu")
    out = pipe.edit(gradient_image((64, 64)), "make it blue", num_iter=2, num_sampling_steps="2")
    assert out[0].size == (64, 64)


@pytest.mark.slow
def test_reconstruction_and_edit_under_two_processes_match_one(tok_dir, tmp_path):
    """Every task at once under DDP (the edit recipe, a reconstruction source and stage 2's question answering) on 2
    ranks gives the losses of one process with accum_steps=2, and exports (FSDP: tests/test_train_resume.py)."""
    edits = write_edits(tmp_path)
    recon = SourceConfig("reconstruction", "shapes", task=Task.RECONSTRUCTION, batch_size=2, text_drop_prob=0.1)
    answers = toy_source(RECIPES["stage2"]().data[0])
    assert answers.task == Task.IMAGE_TO_TEXT

    def config(out, **fields):
        cfg = edit_toy(tok_dir, out, edits, max_steps=2, optim=OptimConfig(lr=1e-3), grad_checkpointing=False, **fields)
        cfg.data += [recon, answers]
        return cfg

    single = Trainer(config(tmp_path / "one", accum_steps=2, parallel="none"), device="cpu").run(resume="none")
    config(tmp_path / "ddp", parallel="ddp", save_every=0).save(tmp_path / "cfg.json")
    torchrun(tmp_path, "dist.log", "--resume", "none")
    got = step_losses(tmp_path / "ddp" / "metrics.jsonl")
    assert sorted(got) == [1, 2] and {f"loss_{name}" for name in ("image_edit", "reconstruction", answers.name)} <= set(
        single[-1]
    )
    for step, ref in zip((1, 2), single):
        assert got[step] == pytest.approx(ref["loss"], rel=1e-4, abs=1e-5), (step, got, single)
    pipe = HarmonPipeline.from_pretrained(tmp_path / "ddp" / "final", device="cpu")  # export works from DDP too
    assert pipe.model.mar.encoder_blocks[0].attn.qkv.weight.shape[0] == 3 * pipe.config.mar.encoder_dim
