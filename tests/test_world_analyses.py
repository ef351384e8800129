import json
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_pipeline
from PIL import Image

from harmon.world.analyses.probe import FEATURES, TASKS, fit_linear_probe, format_probe_table, run_probes


def test_world_concept_labels_match_shape_colour_and_both():
    from harmon.world import Scene, WorldConfig, WorldObject
    from harmon.world.analyses.localisation import world_concept_labels

    world = WorldConfig()
    a = Scene((WorldObject("circle", "red", (3, 3, 29, 29)), WorldObject("square", "blue", (35, 35, 61, 61))), 64)
    b = Scene((WorldObject("triangle", "red", (3, 3, 29, 29)),), 64)
    assert world_concept_labels("circle", [a, b], world) == [True, False]
    assert world_concept_labels("Circles", [a, b], world) == [True, False]
    assert world_concept_labels("red", [a, b], world) == [True, True]
    assert world_concept_labels("blue square", [a, b], world) == [True, False]
    assert world_concept_labels("red square", [a, b], world) == [False, False]
    for bad in ("dog", "red blue", "circle square", ""):
        with pytest.raises(ValueError, match="not a shapes-world concept"):
            world_concept_labels(bad, [a], world)


def test_localisation_and_encoder_locality_report_their_figures(monkeypatch):
    import harmon.world.analyses.localisation as L
    from harmon.world.analyses.localisation import encoder_locality, localisation

    pipe = tiny_pipeline()
    r = localisation(pipe, "gradcam++", "probe", scenes=3, probe_scenes=40)
    probes = L.world_probes(pipe, ("circle", "square", "triangle"), scenes=40)
    with monkeypatch.context() as m:  # with every probe given, no probe scenes are drawn or encoded
        m.setattr(L, "pooled_encoder_features", lambda *a, **k: pytest.fail("probe scenes encoded"))
        assert localisation(pipe, "gradcam++", "probe", scenes=3, probes=probes)["cases"] == r["cases"]
    assert r["cases"] >= 3 and 0 <= r["heat_inside"] <= 1 and 0 < r["boxes_share"] < 1
    assert r["ratio"] == pytest.approx(r["heat_inside"] / r["boxes_share"])
    assert set(r["probe_accuracy"]) == {"circle", "square", "triangle"}
    assert sum(v["cases"] for v in r["by_shape"].values()) == r["cases"]
    a = localisation(pipe, "integrated-gradients", "answer", scenes=2)
    assert 0 <= a["answered_yes"] <= 1 and "probe_accuracy" not in a
    with pytest.raises(ValueError, match="target"):
        localisation(pipe, "gradcam++", "caption", scenes=1)
    loc = encoder_locality(pipe, scenes=1)
    n = pipe.model.grid_for(64)[0] * pipe.model.grid_for(64)[1]
    assert len(loc["jacobian"]) == n and loc["own_vs_other"] > 0


def test_linear_probe_separates_separable_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] > 0).long()
    assert fit_linear_probe(x[:150], y[:150], x[150:], y[150:]) > 0.95


def test_position_probe_label_is_read_from_the_image():
    """Mirroring a scene left-right flips every position label: the label depends on what is drawn, not on the
    order in which objects were placed (that older label was unlearnable: every feature sat at chance)."""
    from harmon.world import Scene, WorldConfig, WorldObject
    from harmon.world.analyses.probe import _labels, _scenes

    world = WorldConfig()
    scenes = _scenes(300, 7, world, two_objects=True)
    mirrored = [
        Scene(
            tuple(
                WorldObject(o.shape, o.color, (64 - o.bbox[2], o.bbox[1], 64 - o.bbox[0], o.bbox[3]))
                for o in sc.objects
            ),
            sc.image_size,
        )
        for sc in scenes
    ]
    y, y_m = _labels(scenes, "position", world), _labels(mirrored, "position", world)
    kept = y >= 0
    assert kept.sum() > 50 and 0.3 < (y[kept] == 0).mean() < 0.7
    assert ((y_m == 1 - y) | ~kept).all() and ((y_m < 0) == ~kept).all()
    # the same picture with its objects stored in the other order keeps its label
    swapped = [Scene(tuple(reversed(sc.objects)), sc.image_size) for sc in scenes]
    assert (_labels(swapped, "position", world) == y).all()


def test_probe_runner_reports_every_task_and_feature():
    result = run_probes(tiny_pipeline(), n_train=24, n_test=12, seeds=(0,))
    assert set(result["accuracy"]) == set(TASKS)
    assert all(set(v) == set(FEATURES) for v in result["accuracy"].values())
    assert "encoder_mean" in format_probe_table(result)


def test_synergy_study_runs_both_arms_and_resumes(tmp_path):
    import json

    from harmon.world.analyses.synergy import format_synergy_table, run_synergy, synergy_config

    base = tmp_path / "base"
    tiny_pipeline().save_pretrained(base)
    assert [s.name for s in synergy_config("joint", base, tmp_path / "x", 0, 5).data] == ["text2image", "image2text_qa"]
    assert [s.name for s in synergy_config("t2i_only", base, tmp_path / "x", 0, 5).data] == ["text2image"]
    kw = dict(seeds=(0, 1), steps=2, n_prompts=6, t2i_batch=2, und_batch=1, num_iter=2, num_sampling_steps="2")
    study = run_synergy(base, tmp_path / "syn", **kw)
    assert set(study["runs"]) == {"t2i_only/seed0", "joint/seed0", "t2i_only/seed1", "joint/seed1"}
    assert study["summary"]["joint"]["n"] == 2 and 0 <= study["summary"]["joint"]["overall"][0] <= 1
    assert "t2i_only" in format_synergy_table(study) and "±" in format_synergy_table(study)
    # a finished study is read back, not retrained: a marker in the file survives a second call
    saved = json.loads((tmp_path / "syn" / "synergy.json").read_text())
    saved["runs"]["joint/seed0"]["marker"] = 1
    (tmp_path / "syn" / "synergy.json").write_text(json.dumps(saved))
    again = run_synergy(base, tmp_path / "syn", **kw)
    assert again["runs"]["joint/seed0"]["marker"] == 1


def test_report_writes_tables_verdicts_and_plots(tmp_path):
    from harmon.world.analyses.report import compare, main

    assert compare((0.8, 0.01), (0.6, 0.02)) == "higher" and compare((0.6, 0.1), (0.65, 0.1)) == "tied"
    acc = {t: {f: ([0.9, 0.01] if f.startswith("encoder") else [0.5, 0.02]) for f in FEATURES} for t in TASKS}
    probe = {"accuracy": acc, "seeds": [0, 1, 2], "n_train": 10, "n_test": 5, "seconds": 3.0}
    runs = {
        f"{arm}/seed{s}": {"overall": base + 0.01 * s, "accuracy": {"counting": base, "colors": base}}
        for arm, base in (("t2i_only", 0.5), ("joint", 0.7))
        for s in range(3)
    }
    study = {
        "base": "b",
        "steps": 10,
        "t2i_batch": 4,
        "und_batch": 2,
        "lr": 1e-3,
        "n_prompts": 12,
        "eval_seed": 0,
        "settings": {},
        "runs": runs,
    }
    import json

    (tmp_path / "p.json").write_text(json.dumps(probe))
    (tmp_path / "s.json").write_text(json.dumps(study))
    out = tmp_path / "docs" / "RESULTS.md"
    (tmp_path / "after.md").write_text("## A study printed by its own command\n")
    main(
        ["--probe", str(tmp_path / "p.json"), "--synergy", str(tmp_path / "s.json"), "--out", str(out)]
        + ["--after", str(tmp_path / "after.md")]
    )
    text = out.read_text()
    assert text.rstrip().endswith("## A study printed by its own command")  # after every generated section
    assert "beat VAE latents (beyond the error bars) on 4 of 4" in text and "claim holds" in text
    assert "0.710 ± 0.010" in text  # joint arm mean ± std over its three seeds
    assert (tmp_path / "docs" / "results" / "probe.png").stat().st_size > 1000
    assert (tmp_path / "docs" / "results" / "synergy.png").stat().st_size > 1000


def test_report_states_the_localisation_table_and_its_verdict(tmp_path):
    import json

    from harmon.world.analyses.report import main

    def row(method, target, ratio):
        r = {
            "method": method,
            "target": target,
            "scenes": 30,
            "seed": 0,
            "cases": 48,
            "heat_inside": 0.25 * ratio,
            "boxes_share": 0.25,
            "ratio": ratio,
            "above_share": 0.5,
            "by_shape": {"circle": {"heat_inside": 0.4}},
        }
        if target == "probe":
            r.update(probe_accuracy={"circle": 0.99}, probe_scenes=100, probe_seed=1)
        else:
            r["answered_yes"] = 0.25
        return r

    Image.new("RGB", (8, 8)).save(tmp_path / "fig.png")
    loc = {
        "rows": [row("gradcam++", "probe", 2.0), row("gradcam++", "answer", 0.9)],
        "seconds": 5.0,
        "encoder_locality": {"own_vs_other": 4.0, "scenes": 3},
        "figure": str(tmp_path / "fig.png"),
    }
    (tmp_path / "l.json").write_text(json.dumps(loc))
    out = tmp_path / "docs" / "RESULTS.md"
    main(["--localisation", str(tmp_path / "l.json"), "--out", str(out)])
    text = out.read_text()
    assert "| gradcam++ | concept probe | 0.500 | 2.00 | 50% | circle 0.40 |" in text
    assert "LLM's Yes/No answer: 0.23 of the heat" in text and "stays under 1.5x" in text
    assert "respond precisely to visual concepts) holds" in text and 'answered "Yes" in 25%' in text
    assert (tmp_path / "docs" / "results" / "gradcam.png").is_file() and "![gradcam]" in text
    loc["rows"][0]["ratio"] = 1.2
    (tmp_path / "l.json").write_text(json.dumps(loc))
    main(["--localisation", str(tmp_path / "l.json"), "--out", str(out)])
    assert "does not clearly hold at this scale, by GradCAM++" in out.read_text()


def test_context_curve_reports_loss_per_visible_count():
    from harmon.world.analyses.context import context_curve

    pipe = tiny_pipeline()
    c = context_curve(pipe, n_images=4, repeats=1, image_size=64)
    assert c["visible"] == [0, 4, 8, 12, 15] and len(c["loss"]) == 5
    assert all(x > 0 for x in c["loss"]) and c["shuffled_text_loss"] > 0


def test_word_binding_table_is_paired_and_consistent():
    """Every word of a row is scored on the same images with the same noise: the table is reproducible from the
    seed, its diagonal gap is zero, and 'bound' says whether the true word has the row's lowest loss."""
    from harmon.world.analyses.words import format_word_table, word_binding

    pipe = tiny_pipeline()
    a = word_binding(pipe, "shape", n_scenes=2, repeats=1, image_size=64)
    b = word_binding(pipe, "shape", n_scenes=2, repeats=1, image_size=64)
    assert a == b and a["words"] == ["circle", "square", "triangle"] and a["cases"] == 3 * 6 - 3  # held-out skipped
    for i, row in enumerate(a["loss"]):
        assert a["gap"][i][i] == 0.0 and all(x > 0 for x in row)
        assert a["bound"][i] == (min(range(len(row)), key=row.__getitem__) == i)
    assert "| circle |" in format_word_table(a)
    with pytest.raises(ValueError, match="attribute"):
        word_binding(pipe, "size")


def test_colour_latent_distances_are_a_metric_table_with_its_closest_pair():
    from harmon.world.analyses.words import colour_latent_distances, format_distance_table

    r = colour_latent_distances(tiny_pipeline(), n_scenes=2, image_size=64)
    d = torch.tensor(r["distance"])
    n = len(r["words"])
    assert d.shape == (n, n) and torch.allclose(d, d.T) and torch.all(d.diagonal() < 1e-4)
    off = d + torch.eye(n) * 1e9
    a, b, dist = r["closest"]
    assert dist == pytest.approx(float(off.min())) and {r["words"].index(a), r["words"].index(b)} == set(
        (torch.nonzero(off == off.min())[0]).tolist()
    )
    assert f"closest: {a}-{b}" in format_distance_table(r)


def test_cli_words_prints_both_tables_and_writes_json(tmp_path, capsys):
    import json

    from helpers import tiny_model, tiny_tokenizer

    from harmon import cli
    from harmon.pipeline import HarmonPipeline

    HarmonPipeline(tiny_model(0), tiny_tokenizer()).save_pretrained(tmp_path / "m")
    out = tmp_path / "w.json"
    assert (
        cli.main(
            [
                "analyze",
                "words",
                "--model",
                str(tmp_path / "m"),
                "--device",
                "cpu",
                "--scenes",
                "1",
                "--repeats",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| true \\ prompt word | red |" in printed and "closest:" in printed
    saved = json.loads(out.read_text())
    assert saved["attribute"] == "color" and len(saved["latent_distance"]["distance"]) == 6


class _PaintsOneColour:
    """A stand-in generator that draws the asked shape in a fixed colour, or two of them for squares."""

    def __init__(self, colour: str) -> None:
        from harmon.config import HarmonConfig

        self.colour = colour
        self.config = HarmonConfig()  # generation.image_size is read; this checks the table, not a model
        self.prompts: list[str] = []

    def generate(self, prompt, num_images_per_prompt=1, generator=None, **_):
        from harmon.world import WorldConfig, WorldObject, render
        from harmon.world.scene import Scene

        self.prompts.append(prompt)
        size = self.config.generation.image_size
        shape = prompt.split()[-1]
        objects = [WorldObject(shape, self.colour, (4, 4, 28, 28))]
        if shape == "square":
            objects.append(WorldObject(shape, self.colour, (36, 36, 60, 60)))
        scene = Scene(objects=tuple(objects), image_size=64)
        return [
            render(scene, WorldConfig(image_size=64)).resize((size, size), Image.NEAREST)
            for _ in range(num_images_per_prompt)
        ]


def test_drawn_attributes_tabulates_what_the_detector_reads():
    from harmon.world import WorldConfig
    from harmon.world.analyses.words import drawn_attributes, format_drawn_table

    world = WorldConfig()
    pipe = _PaintsOneColour("purple")
    r = drawn_attributes(pipe, "color", images=2)
    columns, words = r["columns"], r["words"]
    assert columns == [*words, "none", "several"]
    for i, colour in enumerate(words):
        shapes = world.shapes_for(colour, allow_held_out=False)
        row = r["counts"][i]
        assert sum(row) == 2 * len(shapes)  # every allowed pair, every image, counted once
        assert row[columns.index("several")] == 2 * ("square" in shapes)  # two squares drawn
        assert row[columns.index("purple")] == 2 * len([s for s in shapes if s != "square"])
    purple = words.index("purple")
    allowed = world.shapes_for("purple", allow_held_out=False)
    assert r["accuracy"][purple] == pytest.approx(1 - ("square" in allowed) / len(allowed))
    assert all(a == 0 for i, a in enumerate(r["accuracy"]) if i != purple)
    assert not any(world.is_held_out(p.split()[-2], p.split()[-1]) for p in pipe.prompts)
    assert "| purple |" in format_drawn_table(r)
    shapes = drawn_attributes(pipe, "shape", images=1)  # the stand-in draws the asked shape, two for squares
    assert shapes["columns"] == [*world.shapes, "none", "several", "unknown"]
    assert dict(zip(shapes["words"], shapes["accuracy"])) == {
        "circle": 1.0,
        "square": 0.0,
        "triangle": 1.0,
    }
    with pytest.raises(ValueError, match="attribute"):
        drawn_attributes(pipe, "size")


class _RecolourCodec:
    """Stand-in pipeline whose 'VAE' is the identity on pixels, except that it repaints one palette colour as
    another: every (colour, shape) pair survives the round trip but those of ``source``, read as ``target``."""

    def __init__(self, source: str, target: str, size: int = 64):
        from harmon.world import WorldConfig

        palette = WorldConfig().palette
        self.src = torch.tensor(palette[source], dtype=torch.float32).div(255).mul(2).sub(1)
        self.dst = torch.tensor(palette[target], dtype=torch.float32).div(255).mul(2).sub(1)
        self.device = torch.device("cpu")
        self.config = SimpleNamespace(generation=SimpleNamespace(image_size=size))
        self.model = self

    def grid_for(self, size):
        return (size // 16, size // 16)

    def encode_images(self, pixels):
        return pixels.clone()

    def decode_tokens(self, tokens, grid):
        hit = (tokens - self.src[None, :, None, None]).abs().amax(dim=1, keepdim=True) < 0.02
        return torch.where(hit, self.dst[None, :, None, None].expand_as(tokens), tokens)


def test_codec_round_trip_reads_what_the_decoder_paints():
    from harmon.world import WorldConfig
    from harmon.world.analyses.codec import codec_round_trip, format_codec_table

    world = WorldConfig()
    r = codec_round_trip(_RecolourCodec("green", "orange"), scenes=3, seed=1)
    rows = {(p["color"], p["shape"]): p for p in r["pairs"]}
    assert set(rows) == set(world.pairs(allow_held_out=True))  # held-out pairs are checked too
    for (color, shape), row in rows.items():
        assert row["held_out"] == world.is_held_out(color, shape)
        if color == "green":
            assert row["recovered"] == 0 and row["read_as"] == {f"orange {shape}": 3}
        else:
            assert row["recovered"] == 1 and row["read_as"] == {}
    assert r["held_out"] == 1.0 and r["seen"] == pytest.approx(1 - 3 / 15)  # no held-out pair is green
    table = format_codec_table(r)
    assert "| green circle |  | 0% | orange circle ×3 |" in table and "held-out pairs 100.0%" in table
    with pytest.raises(ValueError, match="scenes"):
        codec_round_trip(_RecolourCodec("green", "orange"), scenes=0)


def test_codec_check_reads_a_bare_stage0_vae_folder(tmp_path):
    """`harmon analyze codec --stage0-vae DIR`: the folder's own VAE does the round trip (an untrained one draws
    nothing the detector can read), and a folder that is not a stage-0 VAE is refused by name."""
    from harmon import cli
    from harmon.world.analyses.codec import StandaloneVAE, codec_round_trip
    from harmon.world.stage0 import train_shapes_vae

    out = train_shapes_vae(tmp_path / "vae", steps=1, batch_size=2, eval_scenes=2)
    vae = StandaloneVAE(out)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    latents = vae.encode_images(pixels)
    assert latents.shape == (2, 16, 4, 4)
    assert torch.allclose(vae.decode_tokens(latents, (4, 4)), vae.vae.decode_latents(latents))
    r = codec_round_trip(vae, scenes=1)
    assert r["seen"] == 0.0 and r["held_out"] == 0.0  # one step of training recovers nothing
    assert (
        cli.main(["analyze", "codec", "--stage0-vae", str(out), "--scenes", "1", "--json", str(tmp_path / "c.json")])
        == 0
    )
    assert len(json.loads((tmp_path / "c.json").read_text())["pairs"]) == 18
    with pytest.raises(FileNotFoundError, match=r"vae_config.json"):
        StandaloneVAE(tmp_path)


def _quick(pipe):
    """The tiny pipeline with 5 diffusion steps, so that teacher-forced drawing is cheap."""
    from dataclasses import replace

    pipe.model.config = pipe.config = pipe.config.replace(
        generation=replace(pipe.config.generation, num_sampling_steps="5")
    )
    return pipe


def test_object_tokens_cover_exactly_the_boxes():
    from harmon.world.analyses.inpaint import object_tokens
    from harmon.world.scene import Scene, WorldObject

    scene = Scene(
        objects=(WorldObject("circle", "red", (0, 0, 16, 16)), WorldObject("square", "blue", (20, 30, 40, 34))),
        image_size=64,
    )
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0, 0] = True  # x1, y1 exclusive: 16 stays in the first token
    expected[1:3, 1:3] = True  # x 20..39 -> tokens 1-2, y 30..33 -> tokens 1-2
    assert torch.equal(object_tokens(scene, (4, 4)), expected.flatten())


def test_draw_unknown_keeps_given_tokens_and_is_seeded():
    from harmon.world.analyses.inpaint import draw_unknown, prompt_rows

    pipe = _quick(tiny_pipeline())
    tokens = torch.randn(1, 16, pipe.model.config.mar.token_dim, generator=torch.Generator().manual_seed(0))
    unknown = torch.zeros(1, 16, dtype=torch.bool)
    unknown[0, [3, 7, 8]] = True
    ids, mask = prompt_rows(pipe, ["a red circle"], guided=True)
    assert ids.shape[0] == 2 and mask[0].sum() > mask[1].sum()  # the prompt, then the shorter unconditional row
    a = draw_unknown(pipe, tokens, unknown, ids, mask, torch.Generator().manual_seed(1))
    b = draw_unknown(pipe, tokens, unknown, ids, mask, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(a[~unknown], tokens[~unknown])
    assert not torch.isclose(a[unknown], tokens[unknown]).all(dim=-1).any()


def test_inpaint_study_reports_every_condition():
    from harmon.world.analyses.inpaint import CONDITIONS, condition_fit, format_inpaint, inpaint_study
    from harmon.world.scoring import TAGS

    pipe = _quick(tiny_pipeline())
    r = inpaint_study(pipe, "free", per_tag=1, lone_scenes=1, seed=0)
    assert set(r["accuracy"]) == set(CONDITIONS)
    assert all(set(r["accuracy"][c]) == {*TAGS, "overall"} for c in CONDITIONS)
    assert 0 < r["object_token_share"] < 1 and 0 <= r["lone_token_off"] <= 1
    assert "| everything |" in format_inpaint(r)
    with pytest.raises(ValueError, match="level"):
        inpaint_study(pipe, "mixed")
    fit = condition_fit(pipe, "free", scenes=4, seed=0)
    assert list(fit["loss_by_masked"]) == [1, 2, 4, 8, 12, 16] and all(v > 0 for v in fit["loss_by_masked"].values())
    assert fit["ridge_r2"] <= 1 and fit["sample_r2"] <= 1
    assert "Lone token's latent explained" in format_inpaint({**r, "fit": fit})


def test_continuation_ridge_reads_a_linear_world_and_the_backbone_trains():
    from harmon.world.analyses.continuation import backbone_curve, continuation_study, format_continuation, ridge_r2

    g = torch.Generator().manual_seed(0)
    base = torch.randn(300, 1, 3, generator=g)
    tokens = base.expand(300, 4, 3) * torch.tensor([1.0, -2.0, 0.5, 3.0]).view(1, 4, 1)  # every token says the rest
    assert min(ridge_r2(tokens[:200], tokens[200:], alpha=1e-6)) > 0.999
    noise = torch.randn(300, 4, 3, generator=g)
    assert max(ridge_r2(noise[:200], noise[200:])) < 0.1

    pipe = tiny_pipeline()
    result = continuation_study(pipe, "free", scenes=16, test_scenes=8, stds=(0.02, 1.0), steps=2, oracle_steps=1)
    assert [p["step"] for p in result["oracle"]] == [1] and "true token" in format_continuation(result)
    assert set(result["curves"]) == {"0.02", "1.0"} and len(result["ridge_r2"]) == 16
    assert [p["step"] for p in result["curves"]["1.0"]] == [2]
    assert "| 1.0 |" in format_continuation(result)
    from harmon.world.analyses.continuation import scene_tokens

    scenes = scene_tokens(pipe, "free", 8, seed=3)
    assert scenes.shape[1] == 16 and torch.equal(scenes, scene_tokens(pipe, "free", 8, seed=3))
    runs = [backbone_curve(pipe.model.config.mar, scenes, scenes, steps=1, every=1, seed=1) for _ in range(2)]
    assert runs[0] == runs[1]


def test_decoder_broadcast_stages_and_head_placement_reading():
    """(a)'s stages rebuild the decoder: its last stage plus the diffusion table is forward_decoder's condition at
    every masked cell. (b) reads the scenes' own tokens on allowed cells only (the reading's check), and a few head
    steps run end to end on the shipped model."""
    from harmon.pipeline import HarmonPipeline
    from harmon.shipped import shipped_model_path
    from harmon.world.analyses import broadcast
    from harmon.world.analyses.relations import conditions
    from harmon.world.scene import WorldConfig

    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu", dtype=torch.float32)
    world = WorldConfig(image_size=pipe.config.generation.image_size)
    pairs = broadcast._scenes(6, world, torch.Generator().manual_seed(0))
    texts = [p["prompt"] for p, _ in pairs]
    tokens, visible = broadcast._drawn(pipe, pairs, world)
    assert visible.sum(1).tolist() == [1] * 6
    stages, _read, masked = broadcast.decoder_stages(pipe, texts, tokens, visible)
    grid = pipe.model.grid_for(world.image_size)
    want = conditions(pipe, texts, tokens, visible)[1][~visible]  # (6 * 3, D)
    got = stages[-1][1][masked] + pipe.model.mar.diffusion_pos_embed(*grid)[0].expand(6, -1, -1)[~visible]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    rows = broadcast.geometry(pipe, 6, world, 0)
    assert [r["stage"] for r in rows["first step"]] == [s for s, _ in stages] + ["diffusion position table"]
    assert all(r["read norm"] > r["cells norm"] for r in rows["first step"][:1])  # buffers outweigh the cells
    result = broadcast.head_placement(pipe, world, True, steps=3, n_train=40, n_test=8, seed=0, batch=16)
    own = result["scenes' own tokens"]
    assert own["A on allowed cells"] == own["B on allowed cells"] == 1.0
    assert own["A allowed"] == own["B allowed"] == 8 and own["other"] == 0 and own["nothing"] == 8 * 2
    assert 0.0 <= result["draws"]["nothing"] <= 32
    enc = broadcast.encoder_position(pipe, world, 60, 0)
    assert next(iter(enc)) == "chance" and list(enc)[-1] == "LLM input (proj_in)" and len(enc) == 2 + 2 + 2
    assert enc["encoder input (tokens + position table, normed)"] == 1.0  # the table names the cell outright
    assert all(0.0 <= v <= 1.0 for v in enc.values())
    llm = broadcast.llm_position(pipe, world, 30, 0)
    assert len(llm) == pipe.model.llm.config.num_hidden_layers and all(0.0 <= v <= 1.0 for v in llm.values())
    asked = broadcast.question_position(pipe, world, 20, 0)
    assert asked["answer: chance"] == 0.5  # Yes and No alternate; 6 test questions
    assert len(asked) == 3 * (1 + pipe.model.llm.config.num_hidden_layers)
    parts = {"head": {"relation": result}, "geometry": rows, "encoder": enc, "question": asked}
    report = broadcast.format_report(parts)
    assert "(b) a fresh diffusion head" in report and "(c) the cell of an object's token" in report
    assert "(d) at the last prompt position" in report
