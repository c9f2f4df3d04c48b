"""Captions match pictures: the generator's metadata checked against pixel analysis."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from marble_world import analysis, prompts, world
from marble_world.world import region_box


def _hwc(scene):
    return world.render_array(scene).transpose(1, 2, 0)


def test_rendered_scene_matches_its_caption_metadata():
    rng = random.Random(123)
    kinds = {"shapes": 0, "text": 0}
    for _ in range(300):
        cap, meta, scene = prompts.sample_example(rng)
        assert prompts.parse(cap) == meta
        kinds[meta["kind"]] += 1
        img = _hwc(scene)
        assert img.shape == (64, 64, 3)
        if meta["kind"] == "text":
            assert cap == f'a sign that says "{meta["word"]}"'
            assert scene.word == meta["word"] and not scene.shapes
            continue
        objs = analysis.objects(img)
        # count: exactly the number asked; "some" means 2 or 3
        if "count" in meta:
            assert len(objs) == meta["count"], cap
        else:
            assert len(objs) in (2, 3), cap
        # colour: every object is the colour asked (else all objects share one palette colour)
        colours = {o["color"] for o in objs}
        assert len(colours) == 1 and colours <= set(world.COLORS), cap
        if "color" in meta:
            assert colours == {meta["color"]}, cap
            assert analysis.color_fraction(img, meta["color"]) == 1.0
        # position: all foreground pixels in the asked region
        if "position" in meta:
            assert analysis.region_fraction(img, meta["position"]) == 1.0, cap
            x0, y0, x1, y1 = region_box(meta["position"], 64)
            for o in objs:
                cx, cy = o["centroid"]
                assert x0 <= cx < x1 and y0 <= cy < y1
    assert kinds["shapes"] > 150 and kinds["text"] > 40


@pytest.mark.parametrize("position", world.POSITIONS)
@pytest.mark.parametrize("count", world.COUNTS)
def test_every_count_fits_every_region(position, count):
    rng = random.Random(count * 10 + len(position))
    for shape in world.SHAPES:
        scene = world.sample_scene(rng, kind="shapes", shape=shape, count=count, position=position, color="blue")
        img = _hwc(scene)
        assert analysis.count_objects(img) == count
        assert analysis.region_fraction(img, position) == 1.0


def test_backgrounds_are_detected_and_shapes_differ():
    rng = random.Random(0)
    for bg in world.BACKGROUNDS:
        scene = world.sample_scene(rng, kind="shapes", count=1, color="yellow", shape="circle")
        scene.background = bg
        img = _hwc(scene)
        assert np.allclose(analysis.background_color(img), np.array(world.BACKGROUNDS[bg]) / 255.0, atol=1e-6)
    # a square fills its box, a circle ~pi/4 of it, a triangle ~1/2
    fills = {}
    for shape in world.SHAPES:
        s = world.Scene("shapes", 64, "white", [world.Shape(shape, "red", (10, 10, 30, 30))])
        fills[shape] = analysis.foreground_mask(_hwc(s)).sum() / 400
    assert fills["square"] == 1.0
    assert 0.70 < fills["circle"] < 0.85
    assert 0.40 < fills["triangle"] < 0.60


def test_same_seed_same_prompts_and_pictures():
    a = [prompts.sample_example(random.Random(7)) for _ in range(1)][0]
    b = [prompts.sample_example(random.Random(7)) for _ in range(1)][0]
    assert a[0] == b[0] and a[1] == b[1]
    assert np.array_equal(world.render_array(a[2]), world.render_array(b[2]))
    assert prompts.make_prompts(50, seed=3) == prompts.make_prompts(50, seed=3)
    assert prompts.make_prompts(50, seed=3) != prompts.make_prompts(50, seed=4)


def test_caption_grammar_round_trip_and_errors():
    for meta in [
        {"kind": "shapes", "shape": "circle", "count": 2, "color": "red", "position": "left"},
        {"kind": "shapes", "shape": "square", "count": 1},
        {"kind": "shapes", "shape": "triangle", "position": "center"},
        {"kind": "text", "word": "cat"},
    ]:
        assert prompts.parse(prompts.caption(meta)) == meta
    assert prompts.caption({"kind": "shapes", "shape": "circle", "count": 2, "color": "red", "position": "left"}) == (
        "two red circles on the left"
    )
    assert prompts.caption({"kind": "shapes", "shape": "square", "count": 1, "color": "blue"}) == "a blue square"
    for bad in ["a photo of a dog", "two purple circles", "", "seven red circles"]:
        with pytest.raises(ValueError):
            prompts.parse(bad)


def test_prompt_cli_writes_jsonl(tmp_path):
    out = tmp_path / "p.jsonl"
    r = subprocess.run(
        [sys.executable, "-m", "marble_world.prompts", "--out", str(out), "--n", "40", "--seed", "5"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(lines) == 40
    assert lines == prompts.make_prompts(40, seed=5)
    for rec in lines:
        meta = {k: v for k, v in rec.items() if k != "prompt"}
        assert prompts.parse(rec["prompt"]) == meta
    bad = subprocess.run([sys.executable, "-m", "marble_world.prompts", "--out", str(out), "--n", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--n" in bad.stderr


def test_committed_prompt_sets():
    for split, n in (("train", 1000), ("eval", 64)):
        recs = [json.loads(l) for l in prompts.prompt_file(split).read_text().splitlines()]
        assert len(recs) == n
        assert all(prompts.parse(r["prompt"]) == {k: v for k, v in r.items() if k != "prompt"} for r in recs)
    with pytest.raises(FileNotFoundError, match="train"):
        prompts.prompt_file("nope")
