"""harmon.loading without a pipeline: the pieces the trainer builds its models from, and atomic writes."""

import os
from pathlib import Path

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer
from safetensors.torch import save_file

from harmon.atomic import atomic_write, is_temp
from harmon.loading import (
    CheckpointError,
    load_pretrained,
    load_vae_weights,
    model_from_state_dict,
    read_vae_weights,
    save_pretrained,
    without_tied_head,
)


def test_vae_weights_read_from_kl16_layout_plain_pickle_and_safetensors(tmp_path):
    sd = {k: v.clone() for k, v in tiny_model().vae.state_dict().items()}
    torch.save({"model": sd, "epoch": torch.tensor(3)}, tmp_path / "kl16.ckpt")
    torch.save(sd, tmp_path / "plain.pth")
    save_file(sd, str(tmp_path / "vae.safetensors"))
    for name in ("kl16.ckpt", "plain.pth", "vae.safetensors"):
        got = read_vae_weights(tmp_path / name)
        assert sorted(got) == sorted(sd) and all(torch.equal(got[k], sd[k]) for k in sd), name
    fresh = tiny_model(seed=1)
    load_vae_weights(fresh.vae, tmp_path / "kl16.ckpt")
    assert all(torch.equal(v, sd[k]) for k, v in fresh.vae.state_dict().items())


def test_vae_weights_of_the_wrong_shape_are_named(tmp_path):
    sd = dict(tiny_model().vae.state_dict())
    first = next(iter(sd))
    sd[first] = torch.zeros(2, 2)
    torch.save({"model": sd}, tmp_path / "kl16.ckpt")
    with pytest.raises(CheckpointError, match=first.replace(".", r"\.")):
        load_vae_weights(tiny_model().vae, tmp_path / "kl16.ckpt")


def test_our_format_round_trips_without_a_pipeline(tmp_path):
    model, tok = tiny_model(), tiny_tokenizer()
    save_pretrained(model.train(), tok, tmp_path / "m")
    loaded, loaded_tok = load_pretrained(tmp_path / "m", device="cpu")
    assert not loaded.training and len(loaded_tok) == len(tok)
    assert loaded.llm.lm_head.weight is loaded.llm.model.embed_tokens.weight
    ours = without_tied_head(model.state_dict(), model)
    assert "llm.lm_head.weight" not in ours
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ours.items())
    rebuilt = model_from_state_dict(model.config, ours, "test")
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in ours.items())


def test_atomic_write_keeps_the_old_file_and_no_temporary_on_failure(tmp_path):
    target = tmp_path / "deep" / "weights.bin"
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"old"))
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_bytes() == b"old" and target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600

    def half_then_crash(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"old" and os.listdir(target.parent) == ["weights.bin"]
    assert is_temp(target.with_name(".weights.bin.abc123.tmp")) and not is_temp(target)
