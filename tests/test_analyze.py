import re

import numpy as np
import pytest
import torch
from helpers import tiny_pipeline
from PIL import Image

from harmon.analyze.gradcam import gradcam_plus_plus, heat_inside, overlay


def test_gradcam_map_shape_range_and_overlay():
    pipe = tiny_pipeline()
    image = Image.new("RGB", (80, 64), (255, 255, 255))
    cam = gradcam_plus_plus(pipe, image, "circle")
    assert cam.shape == (64, 80) and cam.min() >= 0 and cam.max() <= 1 + 1e-6
    assert overlay(image, cam).size == (80, 64)


def _colour_images(n: int, seed: int) -> tuple[list, list[bool]]:
    """White images with a large red or blue patch at a random place: label True for red."""
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for _ in range(n):
        red = bool(torch.rand((), generator=g) < 0.5)
        x, y = (int(v) for v in torch.randint(0, 9, (2,), generator=g))
        im = Image.new("RGB", (64, 64), (255, 255, 255))
        im.paste((220, 20, 20) if red else (20, 20, 220), (x, y, x + 56, y + 56))
        images.append(im)
        labels.append(red)
    return images, labels


def test_concept_probe_fits_held_out_images_and_drives_gradcam():
    from harmon.analyze.gradcam import ConceptProbe

    pipe = tiny_pipeline()
    images, labels = _colour_images(48, 0)
    probe = ConceptProbe.fit(pipe, images, labels, "red", generator=torch.Generator().manual_seed(0))
    assert probe.n_train == 36 and probe.accuracy is not None and probe.accuracy >= 0.75, probe
    again = ConceptProbe.fit(pipe, images, labels, "red", generator=torch.Generator().manual_seed(0))
    assert torch.equal(probe.weight, again.weight)  # reproducible from the seed
    cam = gradcam_plus_plus(pipe, images[0].resize((80, 64)), "red", probe=probe)
    assert cam.shape == (64, 80) and cam.min() >= 0 and cam.max() <= 1 + 1e-6
    from harmon.analyze.gradcam import integrated_gradients

    assert integrated_gradients(pipe, images[0], "red", steps=2, probe=probe).shape == (64, 64)
    with pytest.raises(ValueError, match="fitted for 'red', not 'blue'"):
        gradcam_plus_plus(pipe, images[0], "blue", probe=probe)
    with pytest.raises(ValueError, match="question"):
        gradcam_plus_plus(pipe, images[0], "red", question="Is it red?", probe=probe)
    with pytest.raises(ValueError, match="fitted on 64 px"):
        gradcam_plus_plus(pipe, images[0], "red", image_size=32, probe=probe)


def test_concept_probe_saves_and_loads_and_refuses_other_files(tmp_path):
    from safetensors.torch import save_file

    from harmon.analyze.gradcam import ConceptProbe

    pipe = tiny_pipeline()
    images, labels = _colour_images(16, 3)
    probe = ConceptProbe.fit(pipe, images, labels, "red", held_out=0.0)
    probe.save(tmp_path / "red.safetensors")
    back = ConceptProbe.load(tmp_path / "red.safetensors")
    assert (back.concept, back.image_size, back.accuracy, back.n_train) == ("red", 64, None, 16)
    assert np.array_equal(
        gradcam_plus_plus(pipe, images[1], "red", probe=probe), gradcam_plus_plus(pipe, images[1], "red", probe=back)
    )
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=r"is not a concept probe.*missing tensors: bias, mean, std"):
        ConceptProbe.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="cannot read probe"):
        ConceptProbe.load(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="probe file not found"):
        ConceptProbe.load(tmp_path / "none.safetensors")


def test_concept_probe_rejects_data_it_cannot_learn_from():
    from harmon.analyze.gradcam import ConceptProbe

    pipe = tiny_pipeline()
    images, labels = _colour_images(8, 1)
    with pytest.raises(ValueError, match="8 images but 7 labels"):
        ConceptProbe.fit(pipe, images, labels[:7], "red")
    with pytest.raises(ValueError, match="at least 2 training images with the concept and 2 without"):
        ConceptProbe.fit(pipe, images, [True] * 8, "red")
    with pytest.raises(ValueError, match="held_out"):
        ConceptProbe.fit(pipe, images, labels, "red", held_out=1.0)


def _gradcam_cli(tmp_path):
    """A saved tiny model, folders of red (pos) and blue (neg) images and a scene; returns ``gradcam(concept,
    *flags)``, which runs ``harmon analyze gradcam`` on the scene with that model, and the folder flags."""
    from helpers import tiny_model, tiny_tokenizer

    from harmon import cli
    from harmon.pipeline import HarmonPipeline

    HarmonPipeline(tiny_model(0), tiny_tokenizer()).save_pretrained(tmp_path / "m")
    images, labels = _colour_images(16, 2)
    for name in ("pos", "neg"):
        (tmp_path / name).mkdir()
    for i, (im, red) in enumerate(zip(images, labels)):
        im.save(tmp_path / ("pos" if red else "neg") / f"{i}.png")
    images[0].save(tmp_path / "scene.png")
    model = ["--model", str(tmp_path / "m"), "--device", "cpu"]

    def gradcam(concept: str, *flags: str) -> int:
        return cli.main(["analyze", "gradcam", str(tmp_path / "scene.png"), concept, *flags, *model])

    return gradcam, ["--positives", str(tmp_path / "pos"), "--negatives", str(tmp_path / "neg")]


def test_cli_gradcam_fits_saves_and_reloads_a_probe_on_image_folders(tmp_path, capsys):
    gradcam, folders = _gradcam_cli(tmp_path)
    out = tmp_path / "cam.png"
    assert gradcam("red", *folders, "-o", str(out)) == 0
    assert "probe: ConceptProbe('red', 12 training images" in capsys.readouterr().out
    assert Image.open(out).size == (64, 64)
    saved, again = tmp_path / "red.safetensors", tmp_path / "again.png"
    assert gradcam("red", *folders, "--save-probe", str(saved), "-o", str(out)) == 0
    assert gradcam("red", "--probe", str(saved), "-o", str(again)) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))


def test_cli_gradcam_names_bad_concepts_and_flags(tmp_path, capsys):
    from harmon.analyze.gradcam import ConceptProbe
    from harmon.pipeline import HarmonPipeline

    gradcam, folders = _gradcam_cli(tmp_path)
    saved = tmp_path / "red.safetensors"
    images, labels = _colour_images(16, 2)
    pipe = HarmonPipeline.from_pretrained(tmp_path / "m", device="cpu")
    ConceptProbe.fit(pipe, images, labels, "red").save(saved)
    assert gradcam("red", "--target", "answer", "--probe", str(saved)) == 2
    assert re.search("--probe belongs to --target probe", capsys.readouterr().err)
    assert gradcam("red", "--probe", str(saved), *folders) == 2
    assert re.search("not both", capsys.readouterr().err)
    assert gradcam("dog") == 2
    assert re.search(r"not a shapes-world concept.*--positives DIR --negatives DIR", capsys.readouterr().err)
    assert gradcam("red", *folders[:2]) == 2
    assert re.search("--positives and --negatives go together", capsys.readouterr().err)
    assert gradcam("circle", "--question", "Is it?") == 2
    assert re.search("--target answer", capsys.readouterr().err)


def test_cli_gradcam_explains_the_llm_answer_to_a_question(tmp_path):
    gradcam, _ = _gradcam_cli(tmp_path)
    out = tmp_path / "cam.png"
    assert gradcam("circle", "--target", "answer", "--question", "Is there a circle?", "-o", str(out)) == 0


def test_heat_inside_counts_box_share():
    cam = np.zeros((10, 10))
    cam[2:4, 2:4] = 1.0
    cam[8, 8] = 4.0
    assert heat_inside(cam, [(2, 2, 4, 4)]) == 0.5


def test_integrated_gradients_sum_to_the_score_change_and_map_the_image():
    """Completeness (Sundararajan et al.): token attributions add up to score(image) - score(white image)."""
    from harmon.analyze.gradcam import integrated_gradients, token_attributions

    pipe = tiny_pipeline()
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    image.paste((200, 10, 10), (8, 8, 30, 30))
    attribution, delta = token_attributions(pipe, image, "circle", steps=64)
    assert attribution.shape == (16,)
    assert abs(float(attribution.sum()) - delta) <= 0.02 * abs(delta) + 1e-4, (float(attribution.sum()), delta)
    zero, zero_delta = token_attributions(pipe, Image.new("RGB", (64, 64), (255, 255, 255)), "circle", steps=2)
    assert float(zero.abs().max()) == 0.0 and zero_delta == 0.0  # the baseline itself gets no attribution
    cam = integrated_gradients(pipe, image.resize((80, 64)), "circle", steps=4)
    assert cam.shape == (64, 80) and cam.min() >= 0 and cam.max() <= 1 + 1e-6
