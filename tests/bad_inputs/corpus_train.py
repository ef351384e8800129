"""Training configs: unreadable or mistyped config files, ``--set`` overrides (issue item 3: ``max_steps=ten``),
missing model folders (item 3), and resuming under changed settings (item 6), which is refused with the fields
named and leaves the run's files alone."""

from __future__ import annotations

from corpus_case import Case, Ctx, cli
from corpus_files import file_bytes, folder, run_copy, text, train_config

CONFIG = "{ws}/train.json"
CHECKPOINT = "{ws}/run/checkpoints/step_0000002"


def show(*sets: str) -> list[str]:
    """``harmon train --config train.json --set ... --print-config``: validation only, nothing trains."""
    return ["train", "--config", CONFIG, *[a for s in sets for a in ("--set", s)], "--print-config"]


def train(*sets: str, resume: str = "none") -> list[str]:
    """``harmon train`` on the case's toy config (two steps of a tiny model) with ``--set`` overrides."""
    return [
        "train",
        "--config",
        CONFIG,
        *[a for s in sets for a in ("--set", s)],
        "--resume",
        resume,
        "--device",
        "cpu",
    ]


def resume(*sets: str, checkpoint: str = CHECKPOINT) -> list[str]:
    """Resume the case's copy of the finished toy run from ``checkpoint`` with ``--set`` overrides."""
    return [
        "train",
        "--config",
        "{ws}/run/config.json",
        *[a for s in sets for a in ("--set", s)],
        "--resume",
        checkpoint,
    ]


def setting(id: str, override: str, phrase, xfail: str | None = None) -> Case:
    """A ``--set`` override that validation must refuse (before any model is built)."""
    return cli(id, "train", show(override), phrase, setup=train_config(), before_model=True, xfail=xfail)


def edited(id: str, edit, phrase, xfail: str | None = None) -> Case:
    """A config file edited by ``edit`` that loading or validation must refuse."""
    return cli(id, "train", show(), phrase, setup=train_config(edit), before_model=True, xfail=xfail)


def put(key: str, value):
    return lambda c: c.update({key: value})


FILES = [
    cli("train-config-missing", "train", show(), CONFIG, before_model=True),
    cli(
        "train-config-invalid-json",
        "train",
        show(),
        CONFIG,
        setup=text("train.json", "{max_steps: 3}"),
        before_model=True,
    ),
    cli(
        "train-config-empty",
        "train",
        show(),
        CONFIG,
        setup=text("train.json", ""),
        before_model=True,
    ),
    cli(
        "train-config-not-utf8",
        "train",
        show(),
        CONFIG,
        setup=file_bytes("train.json", b'{"name": "caf\xe9"}'),
        before_model=True,
    ),
    cli(
        "train-config-top-level-list",
        "train",
        show(),
        (CONFIG, "list"),
        setup=text("train.json", "[]"),
        before_model=True,
    ),
    cli("train-config-is-a-folder", "train", show(), CONFIG, setup=folder("train.json"), before_model=True),
    edited("train-config-unknown-field", put("colour", "red"), "colour"),
    edited(
        "train-config-model-is-a-word",
        put("model", "tiny"),
        "model",
    ),
    edited(
        "train-config-data-is-an-object",
        put("data", {"name": "x"}),
        "data",
    ),
    edited("train-config-no-data", put("data", []), "data"),
    edited("train-config-source-without-name", lambda c: c["data"][0].pop("name") and None, "name"),
    edited("train-config-source-unknown-field", lambda c: c["data"][0].update(sizes=3), "sizes"),
    edited(
        "train-config-betas-a-number",
        put("optim", {"betas": 0.9}),
        "betas",
    ),
    edited(
        "train-config-max-steps-a-string",
        put("max_steps", "ten"),
        "max_steps",
    ),
    edited(
        "train-config-image-size-null",
        put("image_size", None),
        "image_size",
    ),
    edited("train-config-model-unknown-field", lambda c: c["model"].update(size="xl"), "size"),
]

SETS = [
    setting(
        "train-set-max-steps-word",
        "max_steps=ten",
        "max_steps",
    ),
    setting(
        "train-set-max-steps-float",
        "max_steps=1e3",
        "max_steps",
    ),
    setting("train-set-max-steps-zero", "max_steps=0", "max_steps"),
    setting("train-set-unknown-field", "colour=red", "colour"),
    setting("train-set-unknown-nested-field", "optim.learning_rate=1", "learning_rate"),
    setting("train-set-without-equals", "max_steps", "key=value"),
    setting("train-set-index-out-of-range", "data.7.batch_size=1", "index"),
    setting(
        "train-set-lr-word",
        "optim.lr=fast",
        "lr",
    ),
    setting("train-set-lr-negative", "optim.lr=-1", "optim.lr"),
    setting(
        "train-set-lr-nan",
        "optim.lr=nan",
        "lr",
    ),
    setting("train-set-image-size-not-16", "image_size=100", "image_size"),
    setting("train-set-image-size-absurd", "image_size=1048576", "image_size"),
    setting("train-set-precision-unknown", "precision=fp8", "precision"),
    setting("train-set-parallel-unknown", "parallel=mpi", "parallel"),
    setting("train-set-batch-size-zero", "data.0.batch_size=0", "batch_size"),
    setting("train-set-task-unknown", "data.0.task=painting", "painting"),
    setting("train-set-format-unknown", "data.0.format=csv", "csv"),
    setting("train-set-cfg-drop-two", "data.1.cfg_drop_prob=2", "cfg_drop_prob"),
    setting("train-set-accum-steps-zero", "accum_steps=0", "accum_steps"),
    setting("train-set-warmup-ratio-one", "optim.warmup_ratio=1", "warmup_ratio"),
    setting("train-set-ema-decay-one", "optim.ema_decay=1", "ema_decay"),
    setting("train-set-log-every-zero", "log_every=0", "log_every"),
    setting("train-set-save-every-negative", "save_every=-5", "save_every"),
    setting("train-set-keep-checkpoints-zero", "keep_checkpoints=0", "keep_checkpoints"),
    setting("train-set-seed-word", "seed=lucky", "seed"),
    setting("train-set-seed-beyond-64-bits", f"seed={10**53}", "seed"),
    setting("train-set-seed-negative", "seed=-1", "seed"),
    setting("train-set-lr-beyond-float", f"optim.lr={10**400}", "optim.lr"),
    setting("train-set-beta-one-or-more", "optim.betas=[0.9, 2.0]", "optim.betas[1]"),
    setting("train-set-betas-three", "optim.betas=[0.9, 0.95, 0.99]", "optim.betas"),
    setting("train-set-loss-weight-negative", "data.0.loss_weight=-1", "loss_weight"),
    setting("train-set-output-dir-empty", "output_dir=", "output_dir"),
    setting("train-set-index-negative", "data.-1.batch_size=1", "index"),
    setting(
        "train-set-preset-unknown",
        "model.preset=huge",
        "huge",
    ),
    setting("train-set-official-without-vae", "model.official_checkpoint=c.pth", "official_vae"),
    setting("train-set-reinit-without-pretrained", 'model.reinit=["mar."]', "reinit"),
]

MISSING = [
    cli(f"train-missing-{name}", "train", train(*sets), phrase, setup=train_config(), xfail=xfail)
    for name, sets, phrase, xfail in (
        ("pretrained-folder", ("model.pretrained={ws}/nope",), "{ws}/nope", None),
        ("tokenizer-folder", ("model.tokenizer={ws}/nope",), "{ws}/nope", None),
        ("llm-folder", ("model.llm_weights=true", "model.llm_folder={ws}/nope"), "{ws}/nope", None),
        ("vae-weights", ("model.vae_weights={ws}/nope.ckpt",), "{ws}/nope.ckpt", None),
        ("train-modules-match-nothing", ("train_modules=lm.",), "lm.", None),
        (
            "data-file",
            ("data.1.format=jsonl", "data.1.path={ws}/nope.jsonl"),
            "{ws}/nope.jsonl",
            None,
        ),
    )
]


def _drop(path: str):
    def setup(ctx: Ctx) -> None:
        (run_copy(ctx) / path).unlink()

    return setup


RESUME = [
    cli(
        "train-resume-longer-max-steps",
        "train",
        resume("max_steps=6"),
        ("max_steps", "resume_override"),
        setup=run_copy,
    ),
    cli(
        "train-resume-other-batch-size",
        "train",
        resume("data.0.batch_size=1"),
        "data.0.batch_size",
        setup=run_copy,
    ),
    cli("train-resume-other-lr", "train", resume("optim.lr=0.5"), "optim.lr", setup=run_copy),
    cli("train-resume-auto-other-seed", "train", resume("seed=7", checkpoint="auto"), "seed", setup=run_copy),
    cli(
        "train-resume-missing-checkpoint",
        "train",
        resume(checkpoint="{ws}/run/checkpoints/step_0000009"),
        "step_0000009",
        setup=run_copy,
    ),
    cli("train-resume-a-file", "train", resume(checkpoint="{ws}/run/metrics.jsonl"), "metrics.jsonl", setup=run_copy),
    cli(
        "train-resume-incomplete-checkpoint",
        "train",
        resume(),
        ("step_0000002", "COMPLETE"),
        setup=_drop("checkpoints/step_0000002/COMPLETE"),
    ),
    cli(
        "train-resume-without-trainer-state",
        "train",
        resume(),
        ("step_0000002", "trainer.pt"),
        setup=_drop("checkpoints/step_0000002/trainer.pt"),
    ),
]

CASES: list[Case] = [*FILES, *SETS, *MISSING, *RESUME]
