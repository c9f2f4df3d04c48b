"""Whole runs on sd3-tiny with two deliberately conflicting dependency-free rewards."""

from __future__ import annotations

import json
import os

import pytest
import torch

from marble import RewardOutput, RewardSpec, hookimpl
from marble.checkpoint import list_checkpoints
from marble.cli import main
from marble.config import load_config
from marble.errors import ConfigError
from marble.testing import marble_plugin  # noqa: F401
from marble.trainer import Trainer

torch.set_num_threads(1)


class Redness:
    """Mean red minus mean of green and blue: pulls toward saturated red."""

    def score(self, images, prompts, metadata):
        x = images.float()
        return RewardOutput((x[:, 0] - 0.5 * (x[:, 1] + x[:, 2])).mean(dim=(1, 2)))


class Brightness:
    """Mean luminance: pulls toward white, which costs redness. Applies only to 'bright' prompts."""

    def score(self, images, prompts, metadata):
        x = images.float()
        mask = torch.tensor(["bright" in p for p in prompts])
        return RewardOutput(x.mean(dim=(1, 2, 3)), mask)


class Plugin:
    @hookimpl
    def marble_register_rewards(self):
        return [RewardSpec("redness", lambda: Redness(), description="test: redness"),
                RewardSpec("brightness_t", lambda: Brightness(), description="test: brightness")]


@pytest.fixture
def plugin(marble_plugin):
    marble_plugin(Plugin(), name="conflict")


def config(tmp_path, name, **train):
    t = {"iterations": 4, "prompts_per_iteration": 2, "group_size": 4, "num_steps": 4,
         "timesteps_per_sample": 2, "micro_batch": 4, "optimizer_steps": 2, "beta": 0.1, "lr": 1e-3,
         "save_every": 2, "eval_every": 2, "eval_prompts_count": 4, "progress": False}
    t.update(train)
    return {
        "output_dir": str(tmp_path / name),
        "backbone": {"name": "sd3-tiny", "args": {"resolution": 32}},
        "rewards": [{"name": "redness", "weight": 1.0}, {"name": "brightness_t", "weight": 1.0}],
        "balancer": {"name": "marble", "args": {"refresh_every": 2}},
        "prompts": [{"texts": ["a bright red apple", "a dark red rose", "a bright sunny field", "a red car"]}],
        "eval_prompts": [{"texts": ["a bright red kite", "a red barn"]}],
        "train": t,
    }


def read_metrics(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def trained_state(run):
    state = torch.load(os.path.join(list_checkpoints(run)[-1], "state.pt"), weights_only=False)
    return state


def test_marble_run_logs_checkpoints_and_resumes_identically(plugin, tmp_path):
    full = load_config(None, data=config(tmp_path, "full"))
    Trainer(full).train()
    run = full.output_dir
    lines = read_metrics(run)
    train_lines = [m for m in lines if "reward/redness/mean" in m]
    assert [m["iteration"] for m in train_lines] == [1, 2, 3, 4]
    for m in train_lines:
        for key in ("reward/redness/mean", "reward/brightness_t/mean", "reward/redness/adv_std",
                    "reward/brightness_t/masked_frac", "alpha_bar/redness", "alpha_bar/brightness_t",
                    "loss/redness", "kl", "grad_norm", "step", "old_eta"):
            assert key in m, f"{key} missing at iteration {m['iteration']}"
    # optimizer_steps=2 and refresh_every=2: every iteration holds one refresh step
    for m in train_lines:
        for key in ("alpha/redness", "alpha/brightness_t", "grad_norm/redness", "cos/marble/redness",
                    "cos/marble/min", "conflict_rate/marble", "cos/weighted_sum/min",
                    "conflict_rate/weighted_sum"):
            assert key in m, f"{key} missing at iteration {m['iteration']}"
        assert abs(m["alpha/redness"] + m["alpha/brightness_t"] - 1) < 1e-6
        assert 0 <= m["conflict_rate/marble"] <= 1
    # brightness applies to 'bright' prompts only: its masked fraction is logged honestly
    from marble.prompts import PromptSampler, load_sources

    sampler = PromptSampler(load_sources(full.prompts), full.train.seed)
    for it, m in enumerate(train_lines):
        drawn = sampler.draw(full.train.prompts_per_iteration, it)  # the same deterministic draw
        expected = 1 - sum("bright" in p.text for p in drawn) / len(drawn)
        assert m["reward/brightness_t/masked_frac"] == pytest.approx(expected)
    evals = [m for m in lines if "eval/redness/mean" in m]
    assert [m["iteration"] for m in evals] == [0, 2, 4]
    assert os.path.isfile(os.path.join(run, "images", "eval-000000.png"))
    assert os.path.isfile(os.path.join(run, "images", "eval-000004.png"))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(run, "tb")))
    assert [os.path.basename(p) for p in list_checkpoints(run)] == ["checkpoint-000002", "checkpoint-000004"]
    ckpt = list_checkpoints(run)[-1]
    assert os.path.isfile(os.path.join(ckpt, "lora", "pytorch_lora_weights.safetensors"))
    assert os.path.isfile(os.path.join(run, "lora", "pytorch_lora_weights.safetensors"))
    plugins = json.load(open(os.path.join(run, "plugins.json")))
    assert {c["name"] for c in plugins["components"]} >= {"sd3-tiny", "marble", "redness", "brightness_t"}
    assert "train:" in open(os.path.join(run, "config.yaml")).read()

    # interrupted after 2 iterations, then resumed to 4: bit-identical weights and optimizer state
    part = load_config(None, data=config(tmp_path, "part", iterations=2))
    Trainer(part).train()
    resumed = load_config(None, data={**config(tmp_path, "ignored"), "resume": part.output_dir})
    Trainer(resumed).train()
    a, b = trained_state(run), trained_state(part.output_dir)
    assert a["iteration"] == b["iteration"] == 4 and a["step"] == b["step"]
    for key in a["trained"]:
        assert torch.equal(a["trained"][key], b["trained"][key]), key
        assert torch.equal(a["old"][key], b["old"][key]), key
    assert a["balancer"] == b["balancer"]
    assert [m["iteration"] for m in read_metrics(part.output_dir) if "reward/redness/mean" in m] == [1, 2, 3, 4]
    # the weights really moved
    init = Trainer(load_config(None, data=config(tmp_path, "fresh"))).backbone.adapter_state("trained")
    assert any(not torch.equal(init[k], a["trained"][k]) for k in init)


def test_refuses_to_overwrite_a_run(plugin, tmp_path, capsys):
    cfg = load_config(None, data=config(tmp_path, "r", iterations=1, eval_every=0, save_every=1))
    Trainer(cfg).train()
    from marble.errors import MarbleError

    with pytest.raises(MarbleError, match="resume="):
        Trainer(cfg).train()


@pytest.mark.parametrize("balancer", ["weighted_sum", "fixed", "marble_full"])
def test_other_balancers_run(plugin, tmp_path, balancer):
    data = config(tmp_path, balancer, iterations=1, eval_every=0, save_every=0)
    data["balancer"] = {"name": balancer}
    Trainer(load_config(None, data=data)).train()
    (m,) = [x for x in read_metrics(data["output_dir"]) if "reward/redness/mean" in x]
    if balancer == "marble_full":
        assert "alpha/redness" in m and "cos/marble/min" in m
    if balancer == "weighted_sum":
        assert "loss/weighted_sum" in m and "reward/weighted_sum/adv_std" in m


def test_cli_train_and_bad_resume(plugin, tmp_path, capsys):

    from omegaconf import OmegaConf

    path = tmp_path / "c.yaml"
    OmegaConf.save(OmegaConf.create(config(tmp_path, "cli", iterations=1, eval_every=0)), path)
    assert main(["train", str(path), "train.progress=false"]) == 0
    assert os.path.isdir(tmp_path / "cli" / "lora")
    code = main(["train", str(path), f"resume={tmp_path / 'nothing-here'}"])
    assert code == 2 and "no complete checkpoint" in capsys.readouterr().err


def test_stages_and_eval_only_rewards(plugin, tmp_path):
    """A sequential schedule of reward sets masks the inactive reward out; eval_rewards are scored
    at evaluation only and never trained on."""
    data = config(tmp_path, "stages", iterations=3, eval_every=3, save_every=0, optimizer_steps=1)
    data["rewards"] = [{"name": "redness"}, {"name": "brightness_t"}]
    data["prompts"] = [{"texts": ["a bright red apple", "a bright field"]}]
    data["eval_rewards"] = [{"name": "brightness_t"}]
    data["train"]["stages"] = [{"start": 0, "rewards": ["redness"]}, {"start": 2, "rewards": ["redness", "brightness_t"]}]
    Trainer(load_config(None, data=data)).train()
    lines = read_metrics(data["output_dir"])
    train = [m for m in lines if "reward/redness/mean" in m]
    assert [m["reward/brightness_t/masked_frac"] for m in train] == [1.0, 1.0, 0.0]
    assert [m["reward/redness/masked_frac"] for m in train] == [0.0, 0.0, 0.0]
    # while brightness is inactive it has no gradient: MARBLE leaves it out (alpha 0)
    assert train[0]["alpha/brightness_t"] == 0.0 and train[0]["alpha/redness"] == 1.0
    evals = [m for m in lines if "eval/brightness_t/mean" in m]
    assert [m["iteration"] for m in evals] == [0, 3]


def test_eval_rewards_are_not_trained_on(plugin, tmp_path):
    data = config(tmp_path, "evalonly", iterations=1, eval_every=1, save_every=0)
    data["rewards"] = [{"name": "redness"}]
    data["eval_rewards"] = [{"name": "brightness_t"}]
    trainer = Trainer(load_config(None, data=data))
    assert trainer.reward_names == ["redness"] and trainer.eval_names == ["brightness_t"]
    trainer.train()
    lines = read_metrics(data["output_dir"])
    assert all("reward/brightness_t/mean" not in m for m in lines)
    assert any("eval/brightness_t/mean" in m for m in lines) and any("eval/redness/mean" in m for m in lines)


class Constant:
    def score(self, images, prompts, metadata):
        return RewardOutput(torch.full((images.shape[0],), 0.25))


def test_a_reward_without_signal_is_left_out(marble_plugin, tmp_path):
    """A reward constant over the batch has advantage 0 everywhere (r = 1/2, which is not neutral):
    it must not take a share of the MARBLE update."""
    class P:
        @hookimpl
        def marble_register_rewards(self):
            return [RewardSpec("redness", lambda: Redness(), description="t"),
                    RewardSpec("flat", lambda: Constant(), description="t")]

    marble_plugin(P(), name="flat")
    data = config(tmp_path, "flat", iterations=1, eval_every=0, save_every=0)
    data["rewards"] = [{"name": "redness"}, {"name": "flat"}]
    Trainer(load_config(None, data=data)).train()
    (m,) = [x for x in read_metrics(data["output_dir"]) if "reward/redness/mean" in x]
    assert m["reward/flat/no_signal"] == 1.0 and m["reward/redness/no_signal"] == 0.0
    assert m["alpha/flat"] == 0.0 and m["grad_norm/flat"] == 0.0 and m["alpha/redness"] == 1.0
    assert m["reward/flat/mean"] == 0.25


def test_overlapped_reward_scoring_changes_nothing(plugin, tmp_path):
    """Scoring block i in a worker thread while block i+1 samples gives the same run."""
    states = {}
    for mode in (True, False):
        data = config(tmp_path, f"overlap-{mode}", iterations=2, eval_every=0, save_every=2, micro_batch=2)
        data["train"]["overlap_rewards"] = mode  # YAML booleans are accepted
        Trainer(load_config(None, data=data)).train()
        states[mode] = trained_state(data["output_dir"])
        lines = [m for m in read_metrics(data["output_dir"]) if "reward/redness/mean" in m]
        states[mode]["means"] = [(m["reward/redness/mean"], m["reward/brightness_t/mean"]) for m in lines]
    assert states[True]["means"] == states[False]["means"]
    for key in states[True]["trained"]:
        assert torch.equal(states[True]["trained"][key], states[False]["trained"][key])


def test_third_party_balancer_plugin(marble_plugin, tmp_path):
    """A balancer from another distribution, selected by name: the trainer follows its weights."""
    from dataclasses import dataclass

    from marble import BalancerSpec
    from marble.balancers.base import Balancer

    @dataclass
    class OnlyArgs:
        index: int = 0

    class OnlyOne(Balancer):
        def mix_weights(self, step):
            return [1.0 if k == self.args.index else 0.0 for k in range(self.k)]

    class P:
        @hookimpl
        def marble_register_rewards(self):
            return [RewardSpec("redness", lambda: Redness(), description="t"),
                    RewardSpec("brightness_t", lambda: Brightness(), description="t")]

        @hookimpl
        def marble_register_balancers(self):
            return [BalancerSpec("only_one", OnlyOne, OnlyArgs, "train on one reward")]

    marble_plugin(P(), name="third")
    data = config(tmp_path, "third", iterations=1, eval_every=0, save_every=0)
    data["balancer"] = {"name": "only_one", "args": {"index": 1}}
    trainer = Trainer(load_config(None, data=data))
    assert isinstance(trainer.balancer, OnlyOne) and trainer.balancer.args.index == 1
    trainer.train()
    (m,) = [x for x in read_metrics(data["output_dir"]) if "reward/redness/mean" in x]
    assert "alpha/redness" not in m and m["grad_norm"] >= 0
    plugins = json.load(open(os.path.join(data["output_dir"], "plugins.json")))
    assert {"kind": "balancer", "name": "only_one"}.items() <= next(
        c for c in plugins["components"] if c["kind"] == "balancer").items()


def test_eval_images_per_prompt_scores_every_image(plugin, tmp_path):
    """eval_images_per_prompt=3: the eval mean and stderr are over 3 fixed-noise images per prompt
    (reproduced here by sampling the repeated prompts with the same generator), the grid shows
    each prompt once."""
    from PIL import Image

    data = config(tmp_path, "evalreps", iterations=1, eval_every=1, save_every=0, eval_images_per_prompt=3,
                  eval_prompts_count=2)
    trainer = Trainer(load_config(None, data=data))
    out = trainer.evaluate(0)
    texts = [p.text for p in trainer.eval_prompts for _ in range(3)]
    assert len(texts) == 6
    cond = trainer.backbone.encode_prompts(texts)
    t = trainer.cfg.train
    ro = trainer.backbone.sample(cond, num_steps=t.num_steps, generator=torch.Generator().manual_seed(t.seed + 12345),
                                 adapter="trained", guidance_scale=t.guidance_scale, sampler=t.sampler)
    red = Redness().score(ro.images.float().cpu(), texts, None).scores.double()
    assert out["eval/redness/mean"] == pytest.approx(float(red.mean()), rel=1e-5, abs=1e-7)
    assert out["eval/redness/stderr"] == pytest.approx(float(red.std() / 6 ** 0.5), rel=1e-4, abs=1e-8)
    bright = Brightness().score(ro.images.float().cpu(), texts, None)
    assert int(bright.mask.sum()) == 3  # "a bright red kite" x 3
    assert out["eval/brightness_t/mean"] == pytest.approx(float(bright.scores[bright.mask].mean()), rel=1e-5)
    grid = Image.open(os.path.join(data["output_dir"], "images", "eval-000000.png"))
    one = Trainer(load_config(None, data=config(tmp_path, "evalone", iterations=1, eval_prompts_count=2)))
    one.evaluate(0)
    assert grid.size == Image.open(os.path.join(tmp_path, "evalone", "images", "eval-000000.png")).size


def _loss_noise_batches(tmp_path, loss_noise, **train):
    data = config(tmp_path, f"ln-{loss_noise}", iterations=1, eval_every=0, save_every=0,
                  prompts_per_iteration=4, group_size=3, micro_batch=5, optimizer_steps=2, **train)
    data["train"]["loss_noise"] = loss_noise
    trainer = Trainer(load_config(None, data=data))
    seen = []
    step = trainer.optimizer_step

    def record(batch):
        seen.append(batch)
        return step(batch)

    trainer.optimizer_step = record
    latents, cond, timesteps, groups, scores, masks, samples = trainer.rollout(0)
    trainer.rollout = lambda it: (latents, cond, timesteps, groups, scores, masks, samples)
    trainer.train_iteration(0)
    return seen, latents, groups


def test_loss_noise_group_shares_draws_and_keeps_groups_in_one_step(plugin, tmp_path):
    seen, latents, groups = _loss_noise_batches(tmp_path, "group")
    assert len(seen) == 2
    covered = []
    for b in seen:
        ids = b.sample_ids.tolist()
        # sample_ids are the group ids: every sample of a group trains on the same eps and timesteps
        for g in set(ids):
            rows = [i for i, x in enumerate(ids) if x == g]
            assert len(rows) == 3  # the whole group is in this optimizer step
            assert all(torch.equal(b.t_index[rows[0]], b.t_index[i]) for i in rows)
        covered += ids
    assert sorted(covered) == sorted(groups.tolist())
    eps = [Trainer._noise(seen[0], torch.arange(len(seen[0].sample_ids)), 0, torch.Generator(), seen[0].latents)]
    ids = seen[0].sample_ids.tolist()
    for i in range(len(ids)):
        for j in range(len(ids)):
            assert torch.equal(eps[0][i], eps[0][j]) == (ids[i] == ids[j])


def test_loss_noise_sample_draws_per_sample(plugin, tmp_path):
    seen, _, groups = _loss_noise_batches(tmp_path, "sample")
    ids = torch.cat([b.sample_ids for b in seen])
    assert sorted(ids.tolist()) == list(range(len(groups)))  # one draw per sample, as before


def test_loss_noise_config_errors_name_the_key(tmp_path):
    data = config(tmp_path, "bad")
    data["train"]["loss_noise"] = "prompt"
    with pytest.raises(ConfigError, match="train.loss_noise"):
        load_config(None, data=data)
    data["train"].update(loss_noise="group", prompts_per_iteration=2, optimizer_steps=3)
    with pytest.raises(ConfigError, match="train.optimizer_steps"):
        load_config(None, data=data)


@pytest.mark.parametrize("loss_noise,prompts", [("sample", 3), ("group", 5)])
def test_every_iteration_takes_exactly_optimizer_steps(plugin, tmp_path, loss_noise, prompts):
    """6 samples (or 5 groups) in 4 optimizer steps do not split into equal chunks, and
    Tensor.chunk would make 3: every sample is trained once, in exactly 4 steps."""
    data = config(tmp_path, f"steps-{loss_noise}", iterations=1, eval_every=0, save_every=0,
                  prompts_per_iteration=prompts, group_size=2, micro_batch=4, optimizer_steps=4)
    data["prompts"] = [{"texts": ["a bright red apple", "a dark red rose", "a bright sunny field", "a red car",
                                  "a bright red kite"]}]
    data["train"]["loss_noise"] = loss_noise
    trainer = Trainer(load_config(None, data=data))
    sizes = []
    step = trainer.optimizer_step

    def record(batch):
        sizes.append(len(batch.sample_ids))
        return step(batch)

    trainer.optimizer_step = record
    trainer.train_iteration(0)
    assert len(sizes) == 4 and trainer.step == 4
    assert sum(sizes) == 2 * prompts and min(sizes) >= 1


def test_more_optimizer_steps_than_samples_names_the_key(tmp_path):
    data = config(tmp_path, "too-many", prompts_per_iteration=2, group_size=2, optimizer_steps=5)
    with pytest.raises(ConfigError, match="train.optimizer_steps"):
        load_config(None, data=data)
