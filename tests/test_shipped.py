"""The tiny shapes-world model that ships inside the package."""

import json

import pytest
import torch

from harmon import cli
from harmon.pipeline import HarmonPipeline
from harmon.shipped import SHIPPED_DIR, shipped_model_path

pytestmark = pytest.mark.skipif(shipped_model_path() is None, reason="this checkout carries no shipped model")


def _attribution_scene():
    from harmon.world.analyses.localisation import demo_scene

    return demo_scene(64)


def _box_share(boxes) -> float:
    """Share of a 64 px image covered by ``boxes`` (disjoint): what a flat heat map puts inside them."""
    return sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) / 64**2


def test_shipped_files_are_small_and_complete():
    size = (SHIPPED_DIR / "model.safetensors").stat().st_size
    assert size <= 25 * 2**20, f"shipped weights are {size / 2**20:.1f} MiB (limit 25)"
    config = json.loads((SHIPPED_DIR / "config.json").read_text())
    assert config["generation"]["image_size"] == 64  # tuned sampling defaults are recorded with the model
    assert (SHIPPED_DIR / "pipeline.json").is_file()  # where and how long it trained


def test_shipped_model_generates_and_answers(tmp_path):
    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu")
    image = pipe.generate("a red circle", generator=torch.Generator().manual_seed(0))[0]
    assert image.size == (64, 64)
    answer = pipe.describe(image, "How many circles are there?")
    assert isinstance(answer, str) and answer


def test_cli_defaults_to_the_shipped_model(tmp_path, capsys):
    out = tmp_path / "out.png"
    assert cli.main(["generate", "a red circle to the left of a blue square", "-o", str(out)]) == 0
    assert cli.main(["describe", str(out), "How many circles are there?"]) == 0
    assert capsys.readouterr().out.strip()


def test_shipped_model_draws_what_it_is_asked():
    """Quality, not just plumbing: most seeds of easy prompts are judged right by the exact scorer (the shipped
    model: 12 of 16, missing three of the four position images and one of "two triangles")."""
    from harmon.world import WorldConfig, detect_objects, judge_prompt, parse_prompt

    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu")
    world = WorldConfig(image_size=pipe.config.generation.image_size)
    prompts = ["a red circle", "a blue square", "two triangles", "a green circle to the left of a yellow square"]
    images = pipe.generate(prompts, num_images_per_prompt=4, generator=torch.Generator().manual_seed(0))
    right = [
        judge_prompt(parse_prompt(p, world), detect_objects(im, world))
        for p, im in zip([p for p in prompts for _ in range(4)], images)
    ]
    assert sum(right) >= 10, f"only {sum(right)} of 16 images judged right"


def test_shipped_model_answers_fresh_questions():
    """Understanding quality on fresh scenes (the full table is in the README): existence and counting, and POPE's
    bare template "Is there a <shape> in the image?" (half "No"): the shipped model scores F1 100 % on 168 such
    questions; a model that never saw a question without a colour scores 44.3 %."""
    from harmon.world.evaluate import shape_existence_scores, understanding_scores

    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu")
    scores, _items, _ = understanding_scores(pipe, 70, seed=5)
    assert scores["accuracy"]["existence"] >= 0.85 and scores["accuracy"]["counting"] >= 0.75, scores["accuracy"]
    bare = shape_existence_scores(pipe, 24, seed=5)
    assert bare["f1"] >= 0.85 and 0.3 <= bare["yes_ratio"] <= 0.7, bare


def test_gradcam_of_the_concept_probe_falls_on_the_asked_shape():
    """Issue #6's acceptance, and the same check made general. GradCAM++ of a linear "circle" probe on the frozen MAR
    encoder puts most of its heat inside the circles' boxes of the test scene (measured: 0.66, every bit of heat in
    the two circles' tokens), and over 30 random scenes (48 (scene, shape) cases, probes fitted on other scenes) the
    heat inside the asked shape's boxes is over 1.5x their share of the image (measured: 0.53 against 0.25; other
    seeds: `harmon analyze localisation --seed S --probe-seed P`). A map that ignored the image would score the
    boxes' share; probes fitted on random labels score 0.25x."""
    from harmon.analyze.gradcam import gradcam_plus_plus, heat_inside
    from harmon.world.analyses.localisation import localisation, world_probe

    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu")
    probes = {s: world_probe(pipe, s) for s in ("circle", "square", "triangle")}
    assert all(p.accuracy > 0.95 for p in probes.values()), probes
    objects, image = _attribution_scene()
    circles = [o.bbox for o in objects if o.shape == "circle"]
    assert heat_inside(gradcam_plus_plus(pipe, image, "circle", probe=probes["circle"]), circles) > 0.5
    r = localisation(pipe, "gradcam++", "probe", scenes=30, seed=0, probes=probes)
    assert r["ratio"] > 1.5, r


@pytest.mark.xfail(
    strict=True,
    reason="GradCAM++ of the LLM's answer does not localise on the shipped model: 0.26 of "
    "the heat inside the asked shape's boxes against their 0.25 share (48 cases)",
)
def test_gradcam_of_the_llm_answer_falls_on_the_asked_shape():
    """The other score GradCAM++ can explain: the LLM's "Yes"/"No" log-odds to "Is there a <shape> in the image?".
    The shipped model answers all 48 of these cases right (one that never saw a question without a colour said "Yes"
    in 27 %), and integrated gradients of the same answer put 0.63 of their heat on the asked shape
    (`harmon analyze localisation`). GradCAM++ of it puts 0.26 there, against the boxes' 0.25 share: its one weight per
    channel, pooled from the answer's gradient, does not pick out the asked object's row. Kept as a strict expected
    failure so that a model on which the answer's GradCAM++ does localise is noticed."""
    from harmon.world.analyses.localisation import localisation

    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu")
    r = localisation(pipe, "gradcam++", "answer", scenes=30, seed=0)
    assert r["ratio"] > 1.5, r


def test_integrated_gradients_of_the_answer_localise_every_shape_of_the_test_scene():
    """Where the answer's evidence sits at the encoder's input: integrated gradients of the LLM's Yes/No put clearly
    more heat inside each asked shape's boxes than their share of the image (the shipped model: circles 2.0x, square
    2.8x, triangle 4.0x). A model that answered "No" to the bare question on this scene failed on the circles
    (0.39x)."""
    from harmon.analyze.gradcam import heat_inside, integrated_gradients

    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu")
    objects, image = _attribution_scene()
    for shape in ("circle", "square", "triangle"):
        boxes = [o.bbox for o in objects if o.shape == shape]
        chance = _box_share(boxes)
        share = heat_inside(integrated_gradients(pipe, image, shape), boxes)
        assert share > 1.4 * chance, (shape, share, chance)


def test_shipped_generator_binds_every_colour_word():
    """What the shipped generator has learned of colour words: on one-object images of each colour, the prompt
    naming that colour has a lower teacher-forced loss than every other colour word by more than 0.002 (measured:
    smallest gap +0.0063, green images under "purple"). A generator that ignored colour words has equal losses under
    every word (paired noise) and fails; so does one whose green, blue and purple are almost interchangeable in the
    VAE's latents (smallest gap +0.0004 at this test's size)."""
    from harmon.world.analyses.words import word_binding

    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu")
    r = word_binding(pipe, "color", n_scenes=6, repeats=2)
    n = len(r["words"])
    worst = min(r["gap"][i][j] for i in range(n) for j in range(n) if i != j)
    assert worst > 0.002, r["gap"]


def test_shipped_vae_carries_every_seen_pair():
    """The generator can only draw what the VAE decodes: every (colour, shape) pair of the training world survives
    encode -> decode exactly (`harmon analyze codec`). Held-out pairs are not asserted: the stage-0 VAE never saw
    them, and the shipped VAE recovers them only in part (41.7 % at 16 scenes per pair, blue triangles never), which
    caps the held-out generation score whatever the generator learned."""
    from harmon.world.analyses.codec import codec_round_trip

    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu")
    r = codec_round_trip(pipe, scenes=4, seed=3)
    failed = {
        f"{p['color']} {p['shape']}": p["read_as"] for p in r["pairs"] if not p["held_out"] and p["recovered"] < 1
    }
    assert not failed, failed
