"""The words the generator renders are read exactly by the real `ocr` reward at 64 px."""

import random

import pytest
import torch

from marble_world import world

from marble_rewards import ocr


def test_rendered_words_are_legible_to_the_ocr_reward():
    reward = ocr.OCRReward(ocr.OCRArgs(num_threads=1))
    rng = random.Random(0)
    words = list(world.WORDS[::4]) + ["apple", "queen", "storm"]  # every 4th word + the longest
    scenes = [world.sample_scene(rng, 64, kind="text", word=w) for w in words]
    x = torch.stack([torch.from_numpy(world.render_array(s)) for s in scenes])
    prompts = [f'a sign that says "{w}"' for w in words]
    out = reward.score(x, prompts, [{"kind": "text", "word": w} for w in words])
    assert out.scores.tolist() == [1.0] * len(words)
    # and a shapes picture under a quoted prompt does not read as the word
    shapes = world.sample_scene(rng, 64, kind="shapes", count=2, color="red")
    out = reward.score(torch.from_numpy(world.render_array(shapes))[None], ['a sign that says "cat"'], [{}])
    assert out.scores.tolist()[0] < 0.5
