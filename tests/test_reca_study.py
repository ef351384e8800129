"""The RecA study's bookkeeping: its run configs, summary and verdict (the runs themselves are too slow here)."""

from __future__ import annotations

import pytest

from harmon.data.tasks import Task
from harmon.world.analyses.reca import format_reca_table, reca_config, summarize, verdict


def _study(base: list[float], reca: list[float], pope_drop: float = 0.0) -> dict:
    runs = {}
    for arm, values in (("base", base), ("reca", reca)):
        for seed, overall in enumerate(values):
            pope = 0.95 - (pope_drop if arm == "reca" else 0.0)
            runs[f"{arm}/seed{seed}"] = {"overall": overall, "position": 0.3, "pope_f1": pope, "counting": 0.9}
    return {"runs": runs}


def test_a_clear_gain_with_understanding_kept_replicates():
    v = verdict(summarize(_study([0.60, 0.61, 0.62], [0.70, 0.71, 0.69])))["reca"]
    assert v["gain"] == pytest.approx(0.09) and v["replicates"]


@pytest.mark.parametrize(
    ("base", "reca", "pope_drop", "why"),
    [
        ([0.60, 0.61, 0.62], [0.64, 0.65, 0.66], 0.0, "gain below 0.05"),
        ([0.50, 0.60, 0.70], [0.55, 0.70, 0.80], 0.0, "gain within two standard errors"),
        ([0.60, 0.61, 0.62], [0.70, 0.71, 0.69], 0.02, "understanding lost"),
        ([0.60, 0.61], [0.70, 0.71], 0.0, "fewer than three runs"),
    ],
)
def test_no_replication_without_every_condition(base, reca, pope_drop, why):
    v = verdict(summarize(_study(base, reca, pope_drop)))["reca"]
    assert not v["replicates"], why


def test_the_table_says_when_runs_are_too_few():
    study = _study([0.6], [0.7])
    assert "cannot be judged" in format_reca_table(study)


def test_reca_config_feeds_images_only_and_keeps_understanding(tmp_path):
    cfg = reca_config("base", tmp_path, seed=3, steps=10, cond_image_size=32, lr=1e-4, batch=4)
    cfg.validate()
    recon, qa = cfg.data
    assert recon.task is Task.RECONSTRUCTION and recon.cond_image_size == 32 and recon.text_drop_prob == 0.1
    assert qa.task is Task.IMAGE_TO_TEXT and qa.batch_size == recon.batch_size == 4
    assert cfg.seed == 3 and not any(m.startswith("vae") for m in cfg.train_modules)


def test_t2i_arms_add_text_to_image_pairs_and_the_control_has_no_reconstruction(tmp_path):
    with_pairs = reca_config("base", tmp_path, seed=0, steps=10, cond_image_size=64, lr=1e-4, batch=4, t2i=True)
    control = reca_config("base", tmp_path, seed=0, steps=10, cond_image_size=None, lr=1e-4, batch=4, t2i=True)
    for cfg in (with_pairs, control):
        cfg.validate()
    assert [s.task for s in with_pairs.data] == [Task.RECONSTRUCTION, Task.IMAGE_TO_TEXT, Task.TEXT_TO_IMAGE]
    assert [s.task for s in control.data] == [Task.IMAGE_TO_TEXT, Task.TEXT_TO_IMAGE]
    assert with_pairs.data[1:] == control.data and with_pairs.optim == control.optim


def test_reca_beside_pairs_is_judged_against_the_pairs_alone():
    runs = {}
    for arm, values in (("base", [0.60, 0.61, 0.62]), ("t2i", [0.66, 0.67, 0.68]), ("reca_t2i", [0.67, 0.68, 0.66])):
        for seed, overall in enumerate(values):
            runs[f"{arm}/seed{seed}"] = {"overall": overall, "pope_f1": 0.95, "counting": 0.9}
    study = {"runs": runs}
    v = verdict(summarize(study))
    assert v["reca_t2i"]["replicates"]  # +0.06 over the base ...
    assert v["reca_beyond_t2i"]["gain"] == pytest.approx(0.0) and not v["reca_beyond_t2i"]["better"]  # ... all pairs
    table = format_reca_table(study)
    assert "t2i (no reconstruction): overall +0.060" in table and "makes no difference to" in table
    runs = {k: {**r, "overall": r["overall"] - 0.04} if k.startswith("reca_t2i") else r for k, r in runs.items()}
    v = verdict(summarize({"runs": runs}))["reca_beyond_t2i"]
    assert v["worse"] and not v["better"]
    assert "costs against the pairs alone" in format_reca_table({"runs": runs})
    one_seed = {k: r for k, r in runs.items() if k.endswith("seed0")}  # no spread: nothing can be judged
    v = verdict(summarize({"runs": one_seed}))["reca_beyond_t2i"]
    assert v["se"] == 0.0 and not v["worse"] and not v["enough_seeds"]
    assert "reca_beyond_t2i: -0.030 ± 0.000; cannot be judged" in format_reca_table({"runs": one_seed})


def test_condition_gap_and_redraw_scores_run_on_the_shipped_model():
    import torch

    from harmon.pipeline import HarmonPipeline
    from harmon.shipped import shipped_model_path
    from harmon.world.analyses.reca import condition_gap, redraw_scores

    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), dtype=torch.float32)
    gap = condition_gap(pipe, n=2, repeats=1)
    assert set(gap) == {"own_image", "other_image"} and all(v > 0 for v in gap.values())
    scores = redraw_scores(pipe, n=1)
    assert set(scores) == {"content", "layout"} and all(0.0 <= v <= 1.0 for v in scores.values())
    assert scores["layout"] <= scores["content"]  # a scene redrawn in place is redrawn in content too
