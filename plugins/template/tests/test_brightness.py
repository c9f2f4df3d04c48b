import torch

from marble.testing import check_reward

from marble_reward_template import plugin
from marble_reward_template.args import BrightnessArgs
from marble_reward_template.reward import BrightnessReward


def test_conformance():
    check_reward(BrightnessReward(BrightnessArgs()))


def test_known_values():
    reward = BrightnessReward(BrightnessArgs(target=0.5))
    images = torch.stack([torch.zeros(3, 8, 8), torch.full((3, 8, 8), 0.5), torch.ones(3, 8, 8)])
    out = reward.score(images, ["a", "b", "c"], [{}, {}, {}])
    assert torch.allclose(out.scores, torch.tensor([0.5, 1.0, 0.5]))


def test_registered_through_marble(marble_plugin):
    marble_plugin(plugin, name="template")
    from marble.host import build_reward

    reward = build_reward("brightness", {"target": 0.25})
    assert reward.args.target == 0.25
