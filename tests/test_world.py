"""Tests of the shapes world: determinism, rendering, exact scorers and their agreement with ground truth."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from world_helpers import CONFIG, found, gen, truth

from harmon.world import (
    Scene,
    WorldConfig,
    caption_scene,
    check_scene,
    detect_objects,
    detection,
    pair_statistics,
    render,
    render_array,
    sample_eval_prompts,
    sample_eval_questions,
    sample_prompt,
    sample_questions,
    sample_scene,
    scene_for_prompt,
    shape_mask,
)
from harmon.world.sampling import sample_content
from harmon.world.scene import boxes_separated

# ---- config and determinism ---------------------------------------------------------------------------------


def test_config_validation():
    with pytest.raises(ValueError, match="apart"):
        WorldConfig(colors=(("red", (200, 0, 0)), ("crimson", (210, 10, 10))), color_weights=(1.0, 1.0), held_out=())
    with pytest.raises(ValueError, match="held_out"):
        WorldConfig(held_out=(("pink", "circle"),))
    with pytest.raises(ValueError, match="unsupported shape"):
        WorldConfig(shapes=("circle", "star"), shape_weights=(1.0, 1.0), held_out=())
    with pytest.raises(ValueError, match="max_size_frac"):
        WorldConfig(min_size_frac=0.3, max_size_frac=0.2)
    with pytest.raises(ValueError, match="color_weights"):
        WorldConfig(color_weights=(1.0,))
    assert WorldConfig(image_size=128).min_size_px == 44 and WorldConfig(image_size=128).gap_px == 4


def test_determinism():
    def draw(seed):
        g = gen(seed)
        scenes = [sample_scene(g) for _ in range(20)]
        prompts = [sample_prompt(g) for _ in range(20)]
        pairs = [scene_for_prompt(p, g) for p in prompts]
        questions = [sample_questions(s, g) for s in scenes]
        captions = [caption_scene(s, g) for s in scenes]
        return scenes, prompts, pairs, questions, captions, sample_eval_questions(14, g), sample_eval_prompts(12, g)

    assert draw(0) == draw(0)
    scene = draw(0)[0][0]
    assert Scene.from_dict(scene.to_dict()) == scene
    assert draw(0)[0] != draw(1)[0]


def test_held_out_pairs_never_in_training():
    g = gen(1)
    held = set(CONFIG.held_out)
    assert len(held) == 3 and {s for _, s in held} == set(CONFIG.shapes)
    seen = Counter()
    for _ in range(2000):
        seen.update(sample_scene(g).pairs)
    assert not held & set(seen)
    assert set(seen) == set(CONFIG.pairs(allow_held_out=False))  # every training pair does occur
    for _ in range(300):
        p = sample_prompt(g)
        assert not p["held_out"]
        assert not held & set(scene_for_prompt(p, g).pairs)
    allowed = Counter()
    for _ in range(500):
        allowed.update(sample_scene(g, allow_held_out=True).pairs)
    assert held <= set(allowed)  # the flag does let them in


def test_pair_statistics_match_sampling():
    stats = pair_statistics(CONFIG)
    g = gen(2)
    hits = np.zeros(len(stats.pairs))
    n = 3000
    for _ in range(n):
        content = set(sample_content(g, CONFIG, int(torch.randint(1, CONFIG.max_objects + 1, (1,), generator=g))))
        hits += [p in content for p in stats.pairs]
    assert np.abs(hits / n - stats.frequency).max() < 0.03
    assert np.allclose(np.diag(stats.cooccurrence), stats.frequency)
    assert np.allclose(stats.cooccurrence, stats.cooccurrence.T)


# ---- rendering ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 96, 128])
def test_render_palette_only_and_no_overlap(size):
    config = WorldConfig(image_size=size)
    allowed = {tuple(rgb) for _, rgb in config.colors} | {config.background}
    g = gen(size)
    for _ in range(40 if size == 64 else 25):
        scene = sample_scene(g, config, num_objects=int(torch.randint(1, 5, (1,), generator=g)))
        check_scene(scene, config)  # in bounds, gaps >= gap_px
        arr = render_array(scene, config)
        assert arr.shape == (size, size, 3) and arr.dtype == np.uint8
        assert {tuple(c) for c in np.unique(arr.reshape(-1, 3), axis=0).tolist()} <= allowed
        for o in scene.objects:
            assert config.min_size_px <= o.width == o.height <= config.max_size_px
            x0, y0, x1, y1 = o.bbox
            crop = np.all(arr[y0:y1, x0:x1] == config.palette[o.color], axis=-1)
            assert np.array_equal(crop, shape_mask(o.shape, o.width, o.height))  # whole shape, nothing on top
        for a in scene.objects:
            for b in scene.objects:
                assert a is b or boxes_separated(a.bbox, b.bbox, config.gap_px)
    assert isinstance(render(scene, config), Image.Image)


def test_grid_layout_one_object_per_cell():
    config = WorldConfig()  # default: grid layout, 2x2 cells of 32 px at 64 px
    assert config.layout == "grid" and config.cell_px == 32
    g = gen(7)
    offsets = set()
    for _ in range(200):
        scene = sample_scene(g, config)
        cells = []
        for o in scene.objects:
            x0, y0, x1, y1 = o.bbox
            cx, cy = x0 // 32, y0 // 32
            assert (x1 - 1) // 32 == cx and (y1 - 1) // 32 == cy  # the box stays inside one cell
            assert x0 - 32 * cx >= 1 and 32 * (cx + 1) - x1 >= 1  # and leaves the gap on both sides
            cells.append((cx, cy))
            offsets.add((x0 - 32 * cx, o.width))
        assert len(set(cells)) == len(cells)
    assert len(offsets) >= 5  # sizes and offsets inside a cell vary


@pytest.mark.parametrize("size", [64, 128])
def test_free_layout_still_supported(size):
    config = WorldConfig(image_size=size, layout="free", min_size_frac=0.2, max_size_frac=0.34, grid_cells=4)
    g = gen(size)
    unaligned = 0
    for _ in range(30):
        scene = sample_scene(g, config)
        check_scene(scene, config)
        unaligned += any(((o.bbox[0] * 4) // size) != (((o.bbox[2] - 1) * 4) // size) for o in scene.objects)
    assert unaligned > 0  # objects straddle the 4x4 grid lines, unlike the grid layout
    with pytest.raises(ValueError, match="layout"):
        WorldConfig(layout="scattered")
    with pytest.raises(ValueError, match="fit"):
        WorldConfig(min_size_frac=0.48, max_size_frac=0.49)


def test_shape_masks_fill_their_box():
    for shape in ("circle", "square", "triangle"):
        for side in range(8, 50):
            ys, xs = np.nonzero(shape_mask(shape, side, side))
            assert (ys.min(), xs.min(), ys.max(), xs.max()) == (0, 0, side - 1, side - 1)
    tri = shape_mask("triangle", 20, 20)
    assert tri[0].sum() <= 2 and tri[-1].all()  # upright: apex on top, base at the bottom


# ---- detection ----------------------------------------------------------------------------------------------


def test_detection_recovers_scenes_exactly():
    g = gen(3)
    for size, n in ((64, 300), (96, 40), (128, 40)):
        config = WorldConfig(image_size=size)
        scenes = [sample_scene(g, config) for _ in range(n)]
        agree = sum(found(detect_objects(render(s, config), config)) == truth(s) for s in scenes)
        assert agree / n >= 0.99, (size, agree / n)


def test_detection_robust_to_noise():
    g = gen(4)
    scenes = [sample_scene(g) for _ in range(300)]
    agree = 0
    for s in scenes:
        arr = render_array(s).astype(np.float32) / 255.0
        noise = torch.randn(arr.shape, generator=g).numpy() * (8 / 255)
        noisy = np.clip(arr + noise, 0.0, 1.0)  # float image in [0, 1]
        agree += found(detect_objects(noisy)) == truth(s)
    assert agree / len(scenes) >= 0.99


def test_detection_robust_to_blur():
    g = gen(15)
    scenes = [sample_scene(g) for _ in range(150)]
    for radius in (0.6, 1.0):
        blurred = (render(s).filter(ImageFilter.GaussianBlur(radius)) for s in scenes)
        agree = sum(sorted(d.pair for d in detect_objects(im)) == sorted(s.pairs) for im, s in zip(blurred, scenes))
        assert agree / len(scenes) >= 0.99, (radius, agree)


def _drawn(kind: str, side: int = 17) -> Image.Image:
    """A non-world shape drawn at 4x and downsampled to 64 px (anti-aliased edges)."""
    im = Image.new("RGB", (256, 256), CONFIG.background)
    d = ImageDraw.Draw(im)
    x0, y0, s, red = 40, 40, side * 4, CONFIG.palette["red"]
    c = (x0 + s / 2, y0 + s / 2, s / 2)
    if kind == "ellipse":
        d.ellipse((x0, y0, x0 + s, y0 + 0.8 * s), fill=red)
    elif kind == "diamond":
        d.polygon([(x0 + s / 2, y0), (x0 + s, y0 + s / 2), (x0 + s / 2, y0 + s), (x0, y0 + s / 2)], fill=red)
    elif kind == "pentagon":
        d.regular_polygon(c, 5, fill=red)
    elif kind == "right triangle":
        d.polygon([(x0, y0), (x0, y0 + s), (x0 + s, y0 + s)], fill=red)
    elif kind == "two discs":
        d.ellipse((x0, y0, x0 + 0.6 * s, y0 + 0.6 * s), fill=red)
        d.ellipse((x0 + 0.4 * s, y0 + 0.4 * s, x0 + s, y0 + s), fill=red)
    elif kind == "triangle":
        d.polygon([(x0 + s / 2, y0), (x0 + s, y0 + s), (x0, y0 + s)], fill=red)
    elif kind == "circle":
        d.ellipse((x0, y0, x0 + s, y0 + s), fill=red)
    return im.resize((64, 64), Image.BILINEAR)


def test_detection_is_strict_about_shapes():
    for kind in ("ellipse", "diamond", "pentagon", "right triangle", "two discs"):
        dets = detect_objects(_drawn(kind))
        assert [d.shape for d in dets] == ["unknown"], kind
    for kind in ("triangle", "circle"):  # the same drawing path gives world shapes back
        assert [(d.color, d.shape) for d in detect_objects(_drawn(kind))] == [("red", kind)]
    canvas = np.full((64, 64, 3), 255, dtype=np.uint8)
    red = np.array(CONFIG.palette["red"], dtype=np.uint8)
    rect = canvas.copy()
    rect[10:20, 10:40] = red  # a 3:1 rectangle is no square
    inverted = canvas.copy()
    inverted[10:30, 10:30][shape_mask("triangle", 20, 20)[::-1]] = red  # upside-down triangle
    ring = canvas.copy()
    ring[10:30, 10:30] = red
    ring[12:28, 12:28] = 255  # a hollow square (e.g. a blur rim) is not an object
    for image in (rect, inverted, ring):  # no world shape
        dets = detect_objects(image)
        assert len(dets) == 1 and dets[0].shape == "unknown"
    speck = canvas.copy()
    speck[5:9, 5:9] = red  # 16 px < 1% of the image: noise
    assert detect_objects(speck) == []
    grey = canvas.copy()
    grey[10:30, 10:30] = 128  # far from every palette colour: unknown pixels, no object
    assert detect_objects(grey) == []
    scene = sample_scene(gen(5), num_objects=3)
    as_tensor = torch.from_numpy(render_array(scene)).permute(2, 0, 1).float() / 255  # (3, H, W) in [0, 1]
    assert found(detect_objects(as_tensor)) == truth(scene)


def test_labelling_fallback_matches_scipy():
    rng = np.random.default_rng(0)
    for connectivity in (4, 8):
        mask = rng.random((40, 40)) > 0.6
        a, na = detection.label_components(mask, connectivity)
        b, nb = detection._label_bfs(mask, connectivity)
        assert na == nb
        # same partition up to label names
        assert len({(x, y) for x, y in zip(a[mask], b[mask])}) == na
