"""FID / KID (harmon.eval.fid, harmon.eval.inception), `harmon eval fid`, and the world's distance.

The agreement with pytorch-fid's and clean-fid's own code is checked by scripts/check_fid_references.py (their
packages are not dependencies); here the distances are checked against independent float64 formulas.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from helpers import harmon_eval, pixels
from PIL import Image

from harmon import cli
from harmon.eval import fid, inception, mjhq
from harmon.loading import CheckpointError
from harmon.world import WorldConfig, render, sample_eval_prompts, scene_for_prompt
from harmon.world.quality import WorldFeatures, world_distance

FAST_CLI = ["--num-iter", "2", "--diffusion-steps", "2", "--image-size", "64", "--device", "cpu"]


def reference_fd(m1, s1, m2, s2) -> float:
    """tr (S1 S2)^½ = tr (S1^½ S2 S1^½)^½, both roots of symmetric matrices by eigh: no sqrtm involved."""
    w, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(r @ s2 @ r)
    return float((m1 - m2) @ (m1 - m2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def stats(f):
    return f.mean(0), np.cov(f, rowvar=False)


@pytest.mark.parametrize("n,d", [(200, 16), (300, 64)])
def test_frechet_distance_matches_an_independent_float64_formula(n, d):
    rng = np.random.default_rng(n)
    f1 = rng.normal(size=(n, d))
    f2 = rng.normal(loc=0.3, size=(n, d)) @ (np.eye(d) + 0.2 * rng.normal(size=(d, d)))
    ours = fid.frechet_distance(*stats(f1), *stats(f2))
    assert ours == pytest.approx(reference_fd(*stats(f1), *stats(f2)), rel=1e-6)
    assert fid.frechet_distance(*stats(f1), *stats(f1)) == pytest.approx(0, abs=1e-8)


def test_frechet_distance_offsets_a_singular_product_and_refuses_a_complex_root(monkeypatch, caplog):
    from scipy import linalg

    real_sqrtm, calls = linalg.sqrtm, []

    def first_call_fails(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    s = np.diag([1.0, 0.0])  # singular covariance: N < D in miniature
    monkeypatch.setattr(linalg, "sqrtm", first_call_fails)
    assert np.isfinite(fid.frechet_distance(np.zeros(2), s, np.ones(2), s))
    np.testing.assert_allclose(calls[1], (s + 1e-6 * np.eye(2)) @ (s + 1e-6 * np.eye(2)))  # pytorch-fid's offset
    assert "near singular" in caplog.text
    monkeypatch.setattr(linalg, "sqrtm", lambda a: np.eye(2) * (1 + 0.01j))
    with pytest.raises(ValueError, match="imaginary component"):
        fid.frechet_distance(np.zeros(2), s, np.ones(2), s)
    monkeypatch.setattr(linalg, "sqrtm", lambda a: np.eye(2) * (1 + 1e-5j))  # rounding: the real part is kept
    assert fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2)) == pytest.approx(0)


def test_kernel_distance_is_the_unbiased_mmd_with_the_cubic_kernel():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 5)), rng.normal(loc=0.5, size=(9, 5))
    k = lambda a, b: (a @ b.T / 5 + 1) ** 3  # noqa: E731
    off = lambda m: (m.sum() - np.trace(m)) / (9 * 8)  # noqa: E731
    by_hand = off(k(x, x)) + off(k(y, y)) - 2 * k(x, y).mean()
    assert fid.kernel_distance(x, y)[0] == pytest.approx(by_hand, rel=1e-12)  # subsets = the whole sets
    big = rng.normal(size=(40, 5))
    assert fid.kernel_distance(big, y, num_subsets=5, subset_size=6, seed=1) == fid.kernel_distance(
        big, y, num_subsets=5, subset_size=6, seed=1
    )


# ---- the network ---------------------------------------------------------------------------------------------


def random_inception_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """He-scaled random weights in pytorch-fid's layout, so features neither vanish nor explode."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    with torch.device("meta"):
        shapes = inception.FIDInceptionV3().state_dict()
    for k, v in shapes.items():
        if k.endswith("conv.weight") or k == "fc.weight":
            out[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        elif k.endswith(("running_var", "bn.weight")):
            out[k] = 0.5 + torch.rand(v.shape, generator=g)
        elif not k.endswith("num_batches_tracked"):  # the counters are optional in the file
            out[k] = 0.1 * torch.randn(v.shape, generator=g)
    return out


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(random_inception_state(), path)
    return path


def test_inception_loads_strictly_and_says_where_the_weights_are(inception_file, tmp_path, caplog):
    model = inception.load_fid_inception(inception_file)
    assert not model.standard and "not the standard" in caplog.text  # random weights, another sha256
    images = [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (40, 40))]
    feats = fid.image_features(images, model)
    assert feats.shape == (2, 2048) and np.isfinite(feats).all() and not np.allclose(feats[0], feats[1])
    for i, im in enumerate(images):
        im.save(tmp_path / f"{i}.png")
    from_files = fid.image_features([tmp_path / "0.png", tmp_path / "1.png"], model, num_workers=2)
    np.testing.assert_array_equal(from_files, feats)  # read and resized in worker processes: the same features
    state = torch.load(inception_file)
    state["fc.extra"] = state.pop("Mixed_7c.branch_pool.conv.weight")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): Mixed_7c.branch_pool.conv.weight") as err:
        inception.load_fid_inception(tmp_path / "bad.pth")
    assert "unexpected keys (1): fc.extra" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"pt_inception-2015-12-05-6726825d\.pth from https://.*sha256 6726"):
        inception.load_fid_inception(tmp_path / "nowhere.pth")
    with zipfile.ZipFile(tmp_path / "scripted.pt", "w") as z:
        z.writestr("inception/code/__torch__.py", "")
    with pytest.raises(ValueError, match="TorchScript"):
        inception.load_fid_inception(tmp_path / "scripted.pt")


def test_resize_modes_scale_like_their_references():
    gray = Image.new("RGB", (37, 53), (100, 100, 100))
    clean = fid.inception_input([gray], "clean")
    assert clean.shape == (1, 3, 299, 299) and torch.allclose(clean, torch.full_like(clean, (100 - 128) / 128))
    legacy = fid.inception_input([gray], "legacy")
    assert torch.allclose(legacy, torch.full_like(legacy, 2 * 100 / 255 - 1))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (299, 299, 3), dtype=np.uint8))
    assert torch.equal(fid.inception_input([noise], "legacy")[0], torch.from_numpy(pixels_of(noise)) / 255 * 2 - 1)
    with pytest.raises(ValueError, match="resize must be one of"):
        fid.inception_input([gray], "bilinear")


def pixels_of(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1).copy()


def test_statistics_files_round_trip_and_foreign_ones_give_the_overall_fid(tmp_path):
    rng = np.random.default_rng(0)
    files = [f"{c}/{i}.png" for c in ("art", "food") for i in range(6)]
    a = fid.FeatureSet.from_features(rng.normal(size=(12, 4)).astype(np.float32), files, resize="clean")
    b = fid.FeatureSet.from_features(rng.normal(size=(12, 4)).astype(np.float32), files, resize="clean")
    back = fid.FeatureSet.load(a.save(tmp_path / "a.npz"))
    np.testing.assert_array_equal(back.sigma, a.sigma)
    assert back.files == files and back.categories == ["art"] * 6 + ["food"] * 6 and back.resize == "clean"
    result = fid.compare_sets(a, back)
    assert [r["category"] for r in result["rows"]] == ["overall", "art", "food"]
    assert result["rows"][0]["fid"] == pytest.approx(0, abs=1e-9)
    np.savez(tmp_path / "foreign.npz", mu=b.mu, sigma=b.sigma)  # pytorch-fid's --save-stats layout
    rows = fid.compare_sets(a, fid.FeatureSet.load(tmp_path / "foreign.npz"))["rows"]
    assert len(rows) == 1 and "kid" not in rows[0]
    assert rows[0]["fid"] == pytest.approx(fid.frechet_distance(a.mu, a.sigma, b.mu, b.sigma))
    b.resize = "legacy"
    with pytest.raises(ValueError, match="another resize"):
        fid.compare_sets(a, b)


# ---- prompts, generation, the command ------------------------------------------------------------------------


def test_prompt_files_mjhq_and_jsonl(tmp_path):
    meta = {"a1": {"prompt": "a red circle", "category": "art"}, "b2": {"prompt": "a square", "category": "food"}}
    (tmp_path / "meta_data.json").write_text(json.dumps(meta))
    got = mjhq.read_fid_prompts(tmp_path / "meta_data.json")
    assert got == [{"id": "a1", "prompt": "a red circle", "category": "art"}, {**got[1], "id": "b2"}]
    (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\n{"prompt": "y", "category": "logo"}\n')
    assert [(r["id"], r["category"]) for r in mjhq.read_fid_prompts(tmp_path / "p.jsonl")] == [
        ("00000", ""),
        ("00001", "logo"),
    ]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x", "id": "../up"}\n')
    with pytest.raises(mjhq.FormatError, match=r"bad\.jsonl:1: id '\.\./up' is not a plain name"):
        mjhq.read_fid_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "dup.jsonl").write_text('{"prompt": "x", "id": "a"}\n{"prompt": "y", "id": "a"}\n')
    with pytest.raises(mjhq.FormatError, match="id 'a' appears twice"):
        mjhq.read_fid_prompts(tmp_path / "dup.jsonl")


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "meta_data.json"
    prompts = sample_eval_prompts(5, torch.Generator().manual_seed(2))
    meta = {f"p{i}": {"prompt": p["prompt"], "category": "aa" if i < 3 else "bb"} for i, p in enumerate(prompts)}
    path.write_text(json.dumps(meta))
    return path


def tree(root):
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*.png"))}


def test_fid_generation_resumes_and_ranks_together_equal_one_process(model_dir, prompt_file, tmp_path, monkeypatch):
    args = ["eval", "fid", "--prompts", str(prompt_file), "--batch-size", "2", "--model", str(model_dir), *FAST_CLI]
    for rank in (1, 0):  # the way torchrun sets them (one process here, as for eval geneval)
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert cli.main([*args, "--outdir", str(tmp_path / "ranks")]) == 0
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert cli.main([*args, "--outdir", str(tmp_path / "one")]) == 0
    split, one = tree(tmp_path / "ranks"), tree(tmp_path / "one")
    assert sorted(one) == [f"images/{'aa' if i < 3 else 'bb'}/p{i}.png" for i in range(5)]
    for k in one:
        np.testing.assert_array_equal(pixels(split[k]), pixels(one[k]))
    lost = one["images/bb/p4.png"]
    before = {k: p.stat().st_mtime_ns for k, p in one.items()}
    lost.unlink()
    pipe_args = dict(batch_size=2, **{"num_iter": 2, "num_sampling_steps": "2", "image_size": 64})
    from harmon.pipeline import HarmonPipeline

    pipe = HarmonPipeline.from_pretrained(model_dir, device="cpu")
    prompts = mjhq.read_fid_prompts(prompt_file)
    extra = {"model": str(model_dir.resolve()), "prompts_file": str(prompt_file)}
    extra["prompts_sha256"] = mjhq.prompts_fingerprint(prompt_file)
    out = mjhq.generate_for_fid(pipe, prompts, tmp_path / "one", extra_config=extra, **pipe_args)
    assert out["generated"] == ["p4"] and out["skipped"] == ["p0", "p1", "p2", "p3"]
    np.testing.assert_array_equal(pixels(lost), pixels(split["images/bb/p4.png"]))
    assert all(p.stat().st_mtime_ns == before[k] for k, p in tree(tmp_path / "one").items() if k != "images/bb/p4.png")
    with pytest.raises(ValueError, match="other settings"):
        mjhq.generate_for_fid(pipe, prompts, tmp_path / "one", extra_config=extra, **{**pipe_args, "batch_size": 1})


def test_cli_fid_scores_overall_and_per_category(model_dir, prompt_file, inception_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fid, "INPUT_SIZE", 75)  # Inception's smallest input: the flow, not the resolution, is tested
    real_fd = fid.frechet_distance  # scipy's sqrtm of a 2048 x 2048 product takes ~20 s on one core: use 32 features
    monkeypatch.setattr(
        fid, "frechet_distance", lambda m1, s1, m2, s2: real_fd(m1[:32], s1[:32, :32], m2[:32], s2[:32, :32])
    )
    world = WorldConfig()
    g = torch.Generator().manual_seed(0)
    for i, p in enumerate(sample_eval_prompts(8, g)):
        (tmp_path / "ref" / ("aa" if i < 4 else "bb")).mkdir(parents=True, exist_ok=True)
        render(scene_for_prompt(p, g, world, allow_held_out=True)).save(
            tmp_path / "ref" / ("aa" if i < 4 else "bb") / f"{i}.jpg"
        )
    score = ["--inception", str(inception_file), "--kid-subsets", "3", "--workers", "0"]
    out = tmp_path / "gen"
    rc = harmon_eval(
        "fid",
        model_dir,
        "--prompts",
        str(prompt_file),
        "--outdir",
        str(out),
        *FAST_CLI,
        *score,
        "--reference",
        str(tmp_path / "ref"),
        "--save-reference-stats",
        str(tmp_path / "ref.npz"),
    )
    text = capsys.readouterr().out
    assert rc == 0 and "NON-STANDARD weights" in text and "| aa |" in text and "| bb |" in text
    first = json.loads((out / "fid_results.json").read_text())
    assert [r["category"] for r in first["rows"]] == ["overall", "aa", "bb"] and first["rows"][0]["n_reference"] == 8
    rc = cli.main(
        [
            "eval",
            "fid",
            "--images",
            str(out / "images"),
            "--reference",
            str(tmp_path / "ref.npz"),
            *score,
            "--json",
            str(tmp_path / "again.json"),
        ]
    )
    assert rc == 0 and json.loads((tmp_path / "again.json").read_text())["rows"] == first["rows"]
    assert cli.main(["eval", "fid", "--images", str(out / "images"), "--kid-subset-size", "1"]) == 2
    assert "argument --kid-subset-size: must be >= 2, got 1" in capsys.readouterr().err
    monkeypatch.delenv("HARMON_FID_INCEPTION", raising=False)
    assert cli.main(["eval", "fid", "--images", str(out / "images"), "--reference", str(tmp_path / "ref")]) == 2
    assert "pt_inception-2015-12-05-6726825d.pth from https://" in capsys.readouterr().err


# ---- the world's distance ------------------------------------------------------------------------------------


def test_world_distance_orders_renders_before_noise(model_dir, capsys):
    prompts = sample_eval_prompts(36, torch.Generator().manual_seed(0))
    world, features = WorldConfig(), WorldFeatures()
    renders = [
        render(scene_for_prompt(p, torch.Generator().manual_seed(i), world, allow_held_out=True))
        for i, p in enumerate(prompts)
    ]
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in prompts]
    good, bad = (world_distance(x, prompts, seed=0, features=features) for x in (renders, noise))
    assert good["feature_dim"] == 256 and good["fd"] < bad["fd"] / 5 and good["kd"] < bad["kd"] / 5
    assert (
        harmon_eval(
            "shapes",
            model_dir,
            "--prompts",
            "12",
            "--questions",
            "0",
            "--shape-questions",
            "0",
            "--fid",
            "--num-iter",
            "2",
            "--diffusion-steps",
            "2",
            "--device",
            "cpu",
        )
        == 0
    )
    assert "World distance (shipped VAE encoder features, 256-d" in capsys.readouterr().out
