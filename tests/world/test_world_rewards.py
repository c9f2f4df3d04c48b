"""Each world reward gives known scores on known pictures; masks follow the metadata."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from marble import RewardError, RewardOutput
from marble_world import world
from marble_world.config import CountArgs, WorldRewardArgs
from marble_world.rewards import ColorReward, ContrastReward, CountReward, PositionReward
from marble_world.world import Scene, Shape


def picture(shapes, bg="white"):
    """A 64 px picture of (shape, colour, box) triples, as a 3 x H x W tensor."""
    s = Scene("shapes", 64, bg, [Shape(sh, c, b) for sh, c, b in shapes])
    return torch.from_numpy(world.render_array(s))


TWO_RED_LEFT = picture([("circle", "red", (4, 6, 20, 22)), ("circle", "red", (6, 36, 22, 52))])
ONE_BLUE_RIGHT = picture([("square", "blue", (40, 20, 56, 36))], bg="darkgrey")
THREE_GREEN_TOP = picture(
    [("triangle", "green", (2, 4, 16, 18)), ("triangle", "green", (24, 4, 38, 18)), ("triangle", "green", (46, 4, 60, 18))],
    bg="black",
)
BLANK = torch.full((3, 64, 64), 245 / 255.0)
META_TWO_RED_LEFT = {"kind": "shapes", "shape": "circle", "count": 2, "color": "red", "position": "left"}


def run(reward, images, metas, prompts=None):
    x = torch.stack(images)
    prompts = prompts or [""] * len(images)
    out = reward.score(x, prompts, metas)
    assert isinstance(out, RewardOutput)
    assert out.scores.dtype == torch.float32 and out.scores.shape == (len(images),)
    if out.mask is not None:
        assert out.mask.dtype == torch.bool and out.mask.shape == (len(images),)
    return out.scores.tolist(), None if out.mask is None else out.mask.tolist()


def test_color_known_scores():
    m = META_TWO_RED_LEFT
    scores, mask = run(ColorReward(), [TWO_RED_LEFT, ONE_BLUE_RIGHT, BLANK], [m, m, m])
    assert scores == [1.0, 0.0, 0.0] and mask == [True, True, True]
    # half red, half blue (equal areas) -> 0.5
    mixed = picture([("square", "red", (4, 4, 20, 20)), ("square", "blue", (40, 40, 56, 56))])
    scores, _ = run(ColorReward(), [mixed], [{"kind": "shapes", "shape": "square", "color": "blue"}])
    assert scores == [0.5]
    # grey objects are not "red"
    grey = TWO_RED_LEFT.clone()
    fg = (TWO_RED_LEFT - BLANK).abs().amax(0) > 0.25
    grey[:, fg] = 0.5
    assert run(ColorReward(), [grey], [m])[0] == [0.0]


def test_count_known_scores():
    metas = [{"kind": "shapes", "shape": "circle", "count": 2}] * 3
    scores, mask = run(CountReward(), [TWO_RED_LEFT, ONE_BLUE_RIGHT, THREE_GREEN_TOP], metas)
    assert scores == [1.0, 0.5, 0.5] and mask == [True] * 3
    assert run(CountReward(), [THREE_GREEN_TOP], [{"kind": "shapes", "shape": "triangle", "count": 1}])[0] == [pytest.approx(1 / 3)]
    assert run(CountReward(), [BLANK], [{"kind": "shapes", "shape": "square", "count": 3}])[0] == [0.25]
    # specks below min_area do not count as objects
    noisy = TWO_RED_LEFT.clone()
    noisy[:, 40, 40] = torch.tensor([0.0, 0.0, 1.0])
    assert run(CountReward(), [noisy], [metas[0]])[0] == [1.0]
    assert run(CountReward(CountArgs(min_area=0.5)), [noisy], [metas[0]])[0] == [0.5]


def test_position_known_scores():
    ask = lambda p: {"kind": "shapes", "shape": "circle", "position": p}  # noqa: E731
    imgs = [TWO_RED_LEFT, TWO_RED_LEFT, ONE_BLUE_RIGHT, ONE_BLUE_RIGHT, THREE_GREEN_TOP, THREE_GREEN_TOP, BLANK]
    metas = [ask("left"), ask("right"), ask("right"), ask("left"), ask("top"), ask("bottom"), ask("center")]
    scores, mask = run(PositionReward(), imgs, metas)
    assert scores == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert all(mask)
    centered = picture([("square", "yellow", (24, 24, 40, 40))])
    assert run(PositionReward(), [centered], [ask("center")])[0] == [1.0]
    # straddling the middle line: half in each half
    straddle = picture([("square", "yellow", (24, 10, 40, 26))])
    assert run(PositionReward(), [straddle, straddle], [ask("left"), ask("right")])[0] == [0.5, 0.5]


def test_masks_follow_what_the_prompt_asks():
    metas = [
        {"kind": "shapes", "shape": "circle", "count": 2, "color": "red", "position": "left"},
        {"kind": "shapes", "shape": "circle", "color": "red"},  # no count, no position
        {"kind": "shapes", "shape": "circle", "count": 2},  # no colour
        {"kind": "text", "word": "cat"},
    ]
    imgs = [TWO_RED_LEFT] * 4
    prompts = ["two red circles on the left", "some red circles", "two circles", 'a sign that says "cat"']
    assert run(ColorReward(), imgs, metas, prompts)[1] == [True, True, False, False]
    assert run(CountReward(), imgs, metas, prompts)[1] == [True, False, True, False]
    assert run(PositionReward(), imgs, metas, prompts)[1] == [True, False, False, False]
    scores, mask = run(ColorReward(), imgs, metas, prompts)
    assert scores[2] == 0.0 and scores[3] == 0.0


def test_metadata_missing_falls_back_to_parsing_the_prompt():
    imgs = [TWO_RED_LEFT, TWO_RED_LEFT, TWO_RED_LEFT]
    prompts = ["two red circles on the left", "a photo of a dog", "two blue circles on the right"]
    scores, mask = run(ColorReward(), imgs, [{}, {}, {}], prompts)
    assert mask == [True, False, True] and scores == [1.0, 0.0, 0.0]
    out = PositionReward().score(torch.stack(imgs), prompts, None)
    assert out.scores.tolist() == [1.0, 0.0, 0.0] and out.mask.tolist() == [True, False, True]
    off = ColorReward(WorldRewardArgs(parse_prompts=False))
    assert run(off, imgs, [{}, {}, {}], prompts)[1] == [False, False, False]


def test_clear_errors():
    with pytest.raises(RewardError, match="color='purple'"):
        ColorReward().score(TWO_RED_LEFT[None], ["x"], [{"kind": "shapes", "shape": "circle", "color": "purple"}])
    with pytest.raises(RewardError, match="count=7"):
        CountReward().score(TWO_RED_LEFT[None], ["x"], [{"kind": "shapes", "shape": "circle", "count": 7}])
    with pytest.raises(RewardError, match="N x 3 x H x W"):
        ColorReward().score(TWO_RED_LEFT, ["x"], [{}])
    with pytest.raises(RewardError, match="2 prompts"):
        ColorReward().score(TWO_RED_LEFT[None], ["x", "y"], [{}])
    with pytest.raises(ValueError, match="fg_threshold"):
        WorldRewardArgs(fg_threshold=0.0)
    with pytest.raises(ValueError, match="min_area"):
        CountArgs(min_area=-1)


def test_count_metadata_from_json_strings_and_floats():
    out = CountReward().score(TWO_RED_LEFT[None], ["x"], [{"kind": "shapes", "shape": "circle", "count": "2"}])
    assert out.scores.tolist() == [1.0]


def test_contrast_known_scores_and_conflict():
    half = torch.zeros(3, 64, 64)
    half[:, :, 32:] = 1.0
    scores, mask = run(ContrastReward(), [half, BLANK], [{}, {}])
    assert mask is None
    assert scores[0] == pytest.approx(1.0) and scores[1] == pytest.approx(0.0, abs=1e-5)
    # the aesthetic pulls against colour: the same layout painted black scores higher contrast
    # than the correct red one, and lower colour fidelity
    black = picture([("circle", "red", (4, 6, 20, 22)), ("circle", "red", (6, 36, 22, 52))])
    fg = (black - BLANK).abs().amax(0) > 0.25
    black[:, fg] = 0.0
    c_red, c_black = run(ContrastReward(), [TWO_RED_LEFT, black], [{}, {}])[0]
    assert c_black > c_red
    col = run(ColorReward(), [TWO_RED_LEFT, black], [META_TWO_RED_LEFT] * 2)[0]
    assert col == [1.0, 0.0]


def test_rewards_accept_other_resolutions():
    big = torch.nn.functional.interpolate(TWO_RED_LEFT[None], scale_factor=2, mode="nearest")
    m = [META_TWO_RED_LEFT]
    for R in (ColorReward(), CountReward(), PositionReward()):
        assert R.score(big, ["x"], m).scores.tolist() == [1.0]


def test_plugin_specs_build_and_import_light():
    from marble_world.plugin import marble_register_rewards

    specs = {s.name: s for s in marble_register_rewards()}
    assert set(specs) == {"world_color", "world_count", "world_position", "world_contrast"}
    for s in specs.values():
        assert s.description
        r = s.build(s.args())
        out = r.score(TWO_RED_LEFT[None], ["two red circles on the left"], [META_TWO_RED_LEFT])
        assert out.scores.tolist()[0] >= 0.0
    code = "import sys, marble_world.plugin; print(sorted(m for m in ('torch', 'numpy', 'scipy', 'PIL') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_entry_point_is_declared():
    from importlib.metadata import entry_points

    eps = [e for e in entry_points(group="marble.plugins") if e.name == "world"]
    assert eps and eps[0].value == "marble_world.plugin"


def test_conformance_checks_of_the_core():
    from marble.testing import check_reward

    imgs = torch.stack([TWO_RED_LEFT, ONE_BLUE_RIGHT, THREE_GREEN_TOP, BLANK])
    prompts = ["two red circles on the left", "a blue square on the right", "three green triangles at the top",
               'a sign that says "cat"']
    from marble_world.prompts import parse

    metas = [parse(p) for p in prompts]
    for R in (ColorReward(), CountReward(), PositionReward(), ContrastReward()):
        check_reward(R, imgs, prompts, metas)
        check_reward(R)  # random images, prompts outside the grammar
