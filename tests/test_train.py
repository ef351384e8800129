"""Trainer: recipes at toy size, optimisation pieces, exact resume (also after SIGKILL), DDP/FSDP2 equivalence."""

import dataclasses
import json
import math
import signal
import time

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer
from PIL import Image
from train_helpers import launch, step_losses, toy_config

from harmon.data import ProceduralSource, Task
from harmon.pipeline import HarmonPipeline
from harmon.train.config import OptimConfig, SourceConfig, TrainConfig, apply_overrides
from harmon.train.formats import FORMAT_INFO, FORMATS, format_options, register_format
from harmon.train.optim import build_optimizer, build_scheduler, lr_factor, select_trainable
from harmon.train.recipes import RECIPES
from harmon.train.sources import build_dataset
from harmon.train.trainer import Trainer
from harmon.world.recipes import RECIPES as SHAPES_RECIPES
from harmon.world.recipes import toy
from harmon.world.recipes_plan import PLAN_RECIPES
from harmon.world.recipes_studies import STUDY_RECIPES


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    tiny_tokenizer().save_pretrained(str(path))
    return str(path)


def losses(history):
    return [h["loss"] for h in history]


# The shapes world has no edit records yet: the edit recipe runs on edit files in tests/test_imagecond_train.py.
@pytest.mark.parametrize("name", sorted(set(RECIPES) - {"edit"}))
def test_every_recipe_runs_at_toy_size(name, tok_dir, tmp_path):
    cfg = toy(RECIPES[name](), tok_dir, str(tmp_path / name))
    history = Trainer(cfg, device="cpu").run(resume="none")
    assert len(history) == 2 and all(math.isfinite(x) for x in losses(history))
    assert (tmp_path / name / "config.json").is_file()  # the resolved config sits next to the checkpoints
    saved = json.loads((tmp_path / name / "config.json").read_text())
    assert saved["train_modules"] == list(cfg.train_modules)
    pipe = HarmonPipeline.from_pretrained(tmp_path / name / "final", device="cpu")
    assert pipe.generate("a red circle", num_iter=2, num_sampling_steps="2", image_size=64)[0].size == (64, 64)


def test_sample_grids_and_registered_evals_run_on_the_live_model(tok_dir, tmp_path, monkeypatch):
    """Every sample_every / eval_every steps the trainer draws its sample prompts into a grid and logs the named
    eval's numbers; both see the model being trained, in eval mode, and training resumes in train mode."""
    from harmon.train import hooks

    seen = []

    def probe_eval(pipe, cfg):
        seen.append((pipe.model.training, cfg.name))
        return {"answer_len": float(len(pipe.describe(Image.new("RGB", (64, 64)), "What?", max_new_tokens=2)))}

    monkeypatch.setitem(hooks.EVALS, "probe", probe_eval)
    cfg = toy(RECIPES["stage1"](), tok_dir, str(tmp_path / "run"))
    overrides = [
        "sample_every=1",
        "eval=probe",
        "eval_every=2",
        'sample_prompts=["a red circle", "a square"]',
        'sample_settings={"num_iter": 2, "num_sampling_steps": "2"}',
    ]
    cfg = apply_overrides(cfg, overrides)
    trainer = Trainer(cfg, device="cpu")
    trainer.run(resume="none")
    assert trainer.model.training
    grids = sorted((tmp_path / "run" / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["step_0000001.png", "step_0000002.png"]
    assert Image.open(grids[0]).size == (128, 64)  # two prompts in one row
    assert seen == [(False, cfg.name)]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/answer_len" in row for row in logged)
    with pytest.raises(ValueError, match="unknown eval 'nope'"):
        hooks.run_eval("nope", trainer.model, trainer.tokenizer, cfg)


@pytest.mark.parametrize("name", sorted({**SHAPES_RECIPES, **PLAN_RECIPES, **STUDY_RECIPES}))
def test_shapes_recipes_build_and_validate(name):
    cfg = {**SHAPES_RECIPES, **PLAN_RECIPES, **STUDY_RECIPES}[name]()
    cfg.validate()
    assert cfg.image_size == 64


def test_shapes_stage3_switches_to_v_prediction_on_a_frozen_understanding_path(tok_dir, tmp_path):
    """Stage III of the shipped model: v-prediction + uniform masks, only the generation side trains."""
    overrides = SHAPES_RECIPES["shapes_stage3"]().model.overrides
    cfg = toy(SHAPES_RECIPES["shapes_stage3"](), tok_dir, str(tmp_path / "s3"))
    cfg.model.overrides = overrides  # toy() swaps the init for a tiny preset; keep the stage's changes
    trainer = Trainer(cfg, device="cpu")
    assert trainer.model.config.mar.diffloss.prediction == "v"
    assert trainer.model.config.mar.mask_ratio_dist == "uniform"
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.run(resume="none")
    after = dict(trainer.model.named_parameters())
    for n, p in after.items():
        if n.startswith(("mar.encoder", "mar.z_proj", "mar.fake_latent", "llm.", "proj_in.", "vae.")):
            assert torch.equal(before[n], p), n  # everything understanding uses is untouched
    for n in ("mar.decoder_blocks.0.mlp.fc1.weight", "mar.diffloss.net.input_proj.weight", "proj_out.0.weight"):
        assert not torch.equal(before[n], after[n]), n
    saved = json.loads((tmp_path / "s3" / "final" / "config.json").read_text())
    assert saved["mar"]["diffloss"]["prediction"] == "v" and saved["generation"]["x0_clip"] is None


def test_shapes_phrasing_trains_every_task_in_both_phrasings(tok_dir, tmp_path):
    """The phrasing stage: canonical and varied (grammar) records of each task, grid level, every source's loss."""
    cfg = toy(SHAPES_RECIPES["shapes_phrasing"](), tok_dir, str(tmp_path / "phrasing"))
    phrasings = {s.name: format_options(s).phrasings for s in cfg.data}
    assert sorted(phrasings.values()) == ["canonical"] * 2 + ["varied"] * 3, phrasings
    history = Trainer(cfg, device="cpu").run(resume="none")
    assert {f"loss_{name}" for name in phrasings} <= set(history[-1])
    assert all(math.isfinite(history[-1][f"loss_{name}"]) for name in phrasings)


def test_shapes_phrasing_free_adds_free_level_questions_and_descriptions():
    base, study = SHAPES_RECIPES["shapes_phrasing"](), STUDY_RECIPES["shapes_phrasing_free"]()
    assert study.data[: len(base.data)] == base.data and study.output_dir.endswith("phrasing_free")
    added = study.data[len(base.data) :]
    assert [(s.name, s.batch_size) for s in added] == [("image2text_qa_free", 8), ("image2text_caption_free", 4)]
    assert [(format_options(s).level, format_options(s).phrasings) for s in added] == [("free", "varied")] * 2
    assert dataclasses.replace(study, name=base.name, output_dir=base.output_dir, data=base.data) == base


def test_reinit_starts_named_modules_fresh_at_a_new_size(tok_dir, tmp_path):
    """model.reinit: a pretrained model with a wider diffusion head; every other weight is the pretrained one."""
    from harmon.train.trainer import build_model

    HarmonPipeline(tiny_model(3), tiny_tokenizer()).save_pretrained(tmp_path / "base")
    base = HarmonPipeline.from_pretrained(tmp_path / "base", device="cpu").model.state_dict()
    width = 2 * base["mar.diffloss.net.input_proj.weight"].shape[0]
    cfg = apply_overrides(
        toy(RECIPES["stage3"](), tok_dir, str(tmp_path / "run")),
        [
            f"model.pretrained={tmp_path / 'base'}",
            "model.preset=null",
            'model.reinit=["mar.diffloss."]',
            f"model.overrides.mar.diffloss.width={width}",
        ],
    )
    cfg.validate()
    model, _ = build_model(cfg)
    sd = model.state_dict()
    assert sd["mar.diffloss.net.input_proj.weight"].shape[0] == width
    for k, v in base.items():
        if not k.startswith("mar.diffloss."):
            assert torch.equal(sd[k], v), k
    assert torch.equal(
        build_model(cfg)[0].state_dict()["mar.diffloss.net.input_proj.weight"], sd["mar.diffloss.net.input_proj.weight"]
    )  # the fresh init comes from the seed
    with pytest.raises(ValueError, match="match no parameter"):
        build_model(apply_overrides(cfg, ['model.reinit=["mar.difloss."]']))
    with pytest.raises(ValueError, match="reinit and rescale apply"):
        apply_overrides(toy(RECIPES["stage3"](), tok_dir, str(tmp_path / "p")), ['model.reinit=["mar."]']).validate()


def test_rescale_multiplies_named_loaded_weights_only(tok_dir, tmp_path):
    """model.rescale: the named parameters of a pretrained model times their factor, every other one as loaded."""
    from harmon.train.trainer import build_model

    HarmonPipeline(tiny_model(3), tiny_tokenizer()).save_pretrained(tmp_path / "base")
    base = HarmonPipeline.from_pretrained(tmp_path / "base", device="cpu").model.state_dict()
    cfg = apply_overrides(
        toy(RECIPES["stage3"](), tok_dir, str(tmp_path / "run")),
        [
            f"model.pretrained={tmp_path / 'base'}",
            "model.preset=null",
            'model.rescale={"mar.decoder_pos_embed_learned": 20, "mar.decoder_embed.": 0.5}',
        ],
    )
    cfg.validate()
    sd = build_model(cfg)[0].state_dict()
    for k, v in base.items():
        factor = (
            20.0 if k.startswith("mar.decoder_pos_embed_learned") else 0.5 if k.startswith("mar.decoder_embed.") else 1
        )
        torch.testing.assert_close(sd[k], v * factor, rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match=r"rescale prefixes \['mar.decoder_table'\] match no parameter"):
        build_model(apply_overrides(cfg, ['model.rescale={"mar.decoder_table": 2}']))
    with pytest.raises(ValueError, match="reinit and rescale apply"):
        apply_overrides(
            toy(RECIPES["stage3"](), tok_dir, str(tmp_path / "p")), ['model.rescale={"mar.": 2}']
        ).validate()


def test_stage1_freezes_the_llm(tok_dir, tmp_path):
    cfg = toy(RECIPES["stage1"](), tok_dir, str(tmp_path / "s1"))
    trainer = Trainer(cfg, device="cpu")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.run(resume="none")
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith("llm."))
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith("vae."))
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("mar.encoder_blocks"))


def test_finetune_decoder_trains_only_the_decoder_side(tok_dir, tmp_path):
    cfg = toy(RECIPES["finetune_decoder"](), tok_dir, str(tmp_path / "fd"))
    trainer = Trainer(cfg, device="cpu")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.run(resume="none")
    for n, p in trainer.model.named_parameters():
        changed = not torch.equal(before[n], p)
        if n.startswith(("mar.encoder", "mar.z_proj", "mar.fake_latent", "llm.", "proj_")):
            assert not changed, n
    assert not torch.equal(
        before["mar.decoder_blocks.0.mlp.fc1.weight"], trainer.model.mar.decoder_blocks[0].mlp.fc1.weight
    )


def test_overrides_parse_and_reject_unknown_fields():
    cfg = apply_overrides(
        RECIPES["stage1"](),
        [
            "optim.lr=3e-4",
            "data.0.path=/d/*.tar",
            "max_steps=7",
            "train_modules=mar.,proj_in.",
            "model.llm_weights=false",
            "data.1.task=image2text",
            "data.1.instructions=brief",
            "data.0.cfg_drop_prob=0",
        ],
    )
    assert cfg.optim.lr == 3e-4 and cfg.data[0].path == "/d/*.tar" and cfg.max_steps == 7
    assert cfg.train_modules == ("mar.", "proj_in.") and cfg.model.llm_weights is False
    with pytest.raises(ValueError, match="unknown field 'lrr'"):
        apply_overrides(RECIPES["stage1"](), ["optim.lrr=1"])
    with pytest.raises(ValueError, match="index"):
        apply_overrides(RECIPES["stage1"](), ["data.9.path=x"])
    cfg.validate()
    assert cfg.data[1].task is Task.IMAGE_TO_TEXT and cfg.data[1].instructions == "brief"
    assert cfg.data[0].cfg_drop_prob == 0.0 and isinstance(cfg.data[0].cfg_drop_prob, float)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    shapes = apply_overrides(
        SHAPES_RECIPES["shapes_stage2"](), ["data.1.format_options.seed=3", "data.2.task=text_only"]
    )
    assert shapes.data[1].format_options == {"kind": "qa", "shape_questions": True, "seed": 3}
    saved = json.loads(json.dumps(shapes.to_dict()))
    assert saved["data"][2]["task"] == "text_only" and TrainConfig.from_dict(saved) == shapes


def _source_error(**fields) -> str:
    cfg = SHAPES_RECIPES["shapes_stage2"]()
    for key, value in fields.items():
        setattr(cfg.data[1], key, value)
    with pytest.raises(ValueError) as err:
        cfg.validate()
    return str(err.value)


def test_sources_are_typed_and_validated_by_name():
    """A source's task, generic fields and format options are checked at validate time, naming the source."""
    assert _source_error(task=None) == (
        "source 'image2text_qa': set a task (one of text2image, image2text, text_only, image_edit, reconstruction)"
    )
    assert "source 'image2text_qa': unknown task 'qa' (one of text2image" in _source_error(task="qa")
    llava_edits = {"format": "llava", "path": "x.json", "task": "image_edit", "format_options": {}}
    assert "format llava serves image2text, text_only, not image_edit" in _source_error(**llava_edits)
    assert "unknown format 'parquet' (registered: " in _source_error(format="parquet")
    assert "unknown format option(s) ['colour']; known: " in _source_error(format_options={"colour": 1})
    assert "kind 'text'" in _source_error(format_options={"kind": "text"})
    assert "crop must be one of" in _source_error(crop="middle")
    assert "captions_from_pairs makes image2text" in _source_error(task="text2image", captions_from_pairs=True)
    web = RECIPES["stage1"]()
    web.data[1].captions_from_pairs = False
    with pytest.raises(
        ValueError, match="format webdataset serves text2image, image_edit, not image2text; for captioning"
    ):
        web.validate()
    old = RECIPES["stage1"]().to_dict()
    old["data"][1]["options"] = {"as_caption": True}
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['options'\] \(`options` is now task"):
        TrainConfig.from_dict(old)


def test_formats_register_with_typed_options(tmp_path):
    @dataclasses.dataclass
    class CountOptions:
        count: int = 3

        def validate(self, src):
            if self.count < 1:
                raise ValueError(f"count must be >= 1, got {self.count}")

    def build(src, cfg):
        n = format_options(src).count
        return ProceduralSource(lambda i: {"image": None, "caption": str(i)}, length=n)

    register_format("counting", build, CountOptions, tasks=(Task.TEXT_TO_IMAGE,), needs_path=False)
    try:
        cfg = TrainConfig(data=[SourceConfig("numbers", "counting", task=Task.TEXT_TO_IMAGE)])
        cfg.validate()
        assert len(build_dataset(cfg.data[0], cfg)) == 3
        cfg.data[0].format_options = {"count": 0}
        with pytest.raises(ValueError, match=r"source 'numbers' \(format counting\): count must be >= 1, got 0"):
            cfg.validate()
    finally:
        del FORMATS["counting"], FORMAT_INFO["counting"]


def test_toy_keeps_each_source_task():
    cfg = toy(RECIPES["stage2"](), "tok", "out")
    assert [(s.name, s.format, s.task, s.format_options) for s in cfg.data] == [
        ("image2text_qa", "shapes", Task.IMAGE_TO_TEXT, {"kind": "qa"}),
        ("text2image", "shapes", Task.TEXT_TO_IMAGE, {}),
        ("image2text_caption", "shapes", Task.IMAGE_TO_TEXT, {"kind": "caption"}),
    ]
    assert [s.task for s in toy(SHAPES_RECIPES["shapes_lm"](), "tok", "out").data] == [Task.TEXT_ONLY]


def test_weight_decay_groups_follow_the_official_rule():
    model = tiny_model()
    select_trainable(model, ("llm.", "mar.", "proj_in.", "proj_out."))
    opt = build_optimizer(model, OptimConfig(weight_decay=0.02))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert "mar.encoder_pos_embed_learned" in decayed and "mar.mask_token" in decayed
    assert "proj_in.0.weight" in decayed
    assert not any("diffloss" in n or n.endswith(".bias") for n in decayed)
    assert "mar.encoder_norm.weight" not in decayed
    assert not any(n.startswith("vae.") for g in opt.param_groups for n in (names[id(p)] for p in g["params"]))


def test_lr_scale_gives_prefixes_their_own_learning_rate():
    model = tiny_model()
    select_trainable(model, ("llm.", "mar.", "proj_in.", "proj_out."))
    cfg = OptimConfig(lr=1e-3, lr_scale={"llm.": 0.1, "llm.model.norm.": 0.5})
    cfg.validate()
    opt = build_optimizer(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    lr_of = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of["llm.model.layers.0.mlp.up_proj.weight"] == pytest.approx(1e-4)
    assert lr_of["llm.model.norm.weight"] == pytest.approx(5e-4)  # the longest prefix wins
    assert lr_of["mar.mask_token"] == pytest.approx(1e-3)
    sched = build_scheduler(opt, 10, cfg)
    for _ in range(5):
        opt.step()
        sched.step()
    assert len({round(r, 9) for r in (g["lr"] / g["initial_lr"] for g in opt.param_groups)}) == 1  # one schedule
    with pytest.raises(ValueError, match="match no trainable"):
        build_optimizer(model, OptimConfig(lr_scale={"lm.": 0.1}))
    with pytest.raises(ValueError, match="must be > 0"):
        OptimConfig(lr_scale={"llm.": 0.0}).validate()


def test_lr_schedule_warmup_then_cosine():
    cfg = OptimConfig(lr=1.0, warmup_ratio=0.1, warmup_start=1e-5)
    assert lr_factor(0, 100, cfg) == pytest.approx(1e-5)
    assert lr_factor(5, 100, cfg) == pytest.approx(1e-5 + (1 - 1e-5) * 0.5)
    assert lr_factor(10, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(55, 100, cfg) == pytest.approx(0.5)
    assert lr_factor(100, 100, cfg) == pytest.approx(0.0, abs=1e-12)


def test_resume_continues_exactly(tok_dir, tmp_path):
    whole = toy_config(tok_dir, tmp_path / "full", optim=OptimConfig(lr=1e-3, ema_decay=0.9))
    full = Trainer(whole, device="cpu").run(resume="none")
    first = toy_config(tok_dir, tmp_path / "cut", optim=OptimConfig(lr=1e-3, ema_decay=0.9))
    Trainer(first, device="cpu").run(resume="none", stop_at=2)  # pause after the checkpoint of step 2 ...
    rest = toy_config(tok_dir, tmp_path / "cut", optim=OptimConfig(lr=1e-3, ema_decay=0.9))
    resumed = Trainer(rest, device="cpu").run(resume="auto")  # ... and continue to step 4
    assert [h["step"] for h in resumed] == [3, 4]
    torch.testing.assert_close(torch.tensor(losses(resumed)), torch.tensor(losses(full)[2:]), rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.extended
def test_sigkill_then_resume_matches_uninterrupted_run(tok_dir, tmp_path):
    """One process (no torchrun) SIGKILLed after a checkpoint and resumed from the CLI. Outside the 5-minute suite:
    tests/test_train_resume.py kills a torchrun job at a worse moment (mid-checkpoint) and test_resume_continues_exactly
    resumes one process exactly."""
    steps = 8
    cfg = toy_config(tok_dir, tmp_path / "ref", steps=steps, save_every=3, optim=OptimConfig(lr=1e-3))
    ref = losses(Trainer(cfg, device="cpu").run(resume="none"))
    cfg.output_dir = str(tmp_path / "killed")
    cfg.save(tmp_path / "cfg.json")
    args = ["-m", "harmon.cli", "train", "--config", str(tmp_path / "cfg.json"), "--device", "cpu"]
    with open(tmp_path / "killed.log", "w") as log:
        proc = launch(args, log)
        deadline = time.time() + 240
        marker = tmp_path / "killed" / "checkpoints" / "step_0000003" / "COMPLETE"
        while not marker.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), (tmp_path / "killed.log").read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = max(step_losses(tmp_path / "killed" / "metrics.jsonl"))
    assert killed_at < steps  # it really died mid-run
    with open(tmp_path / "resumed.log", "w") as log:
        assert launch(args + ["--resume", "auto"], log).wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()
    got = step_losses(tmp_path / "killed" / "metrics.jsonl")  # steps after 3 appear (again) from the resumed run
    for step in range(4, steps + 1):
        assert got[step] == pytest.approx(ref[step - 1], abs=1e-6), step


def test_resume_refuses_other_settings_and_trims_the_metrics(tok_dir, tmp_path):
    """A checkpoint resumed under other settings (here max_steps, which moves the schedule) is refused with the
    field named, unless resume_override; neutral fields (log_every) may change. metrics.jsonl keeps each step once."""
    cfg = toy_config(tok_dir, tmp_path / "run", steps=4, save_every=2, optim=OptimConfig(lr=1e-3))
    Trainer(cfg, device="cpu").run(resume="none")
    ckpt = str(tmp_path / "run" / "checkpoints" / "step_0000002")
    longer = toy_config(tok_dir, tmp_path / "run", steps=6, save_every=2, optim=OptimConfig(lr=1e-3))
    with pytest.raises(ValueError, match=r"max_steps: 4 -> 6.*resume_override=true"):
        Trainer(longer, device="cpu").run(resume=ckpt)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["max_steps"] == 4  # not overwritten
    chatty = toy_config(tok_dir, tmp_path / "run", steps=4, save_every=2, log_every=1, optim=OptimConfig(lr=1e-3))
    Trainer(chatty, device="cpu").run(resume=ckpt)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == sorted({s for s in steps if s}) == [1, 2, 3, 4]
    longer.resume_override = True
    history = Trainer(longer, device="cpu").run(resume=ckpt)
    assert [h["step"] for h in history] == [3, 4, 5, 6]


def test_progress_is_logged_when_not_on_a_terminal(tok_dir, tmp_path, caplog):
    """tqdm stays silent without a terminal (pytest's capture is none): a log line per logged step stands in."""
    cfg = toy_config(tok_dir, tmp_path / "run", steps=2, log_every=1, save_every=0, export=False)
    with caplog.at_level("INFO", logger="harmon.train.trainer"):
        Trainer(cfg, device="cpu").run(resume="none")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split("  ")[0] for line in lines] == ["step 1/2", "step 2/2"]
    assert all("loss " in line and "samples/s" in line for line in lines)
