"""Data-parallel training with 2 CPU processes (gloo) on sd3-tiny with MARBLE (issue 7).

Every run here is real: ``marble.distributed.launch`` runs ``accelerate launch`` with two
processes of ``dist_child.py`` (the unchanged ``marble`` CLI plus three dependency-free test
rewards registered in-process), compared against the single-process Trainer.

* alpha is bit-identical on both ranks at every MARBLE refresh, and so are the final adapters;
* the 2-process run equals a 1-process run with the same global batch and seed (float tolerance);
* a resumed 2-process run continues bit-identically; resuming it with 1 process stays within
  float tolerance;
* a rank that raises (or dies) ends the whole job, naming the error, well within a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from marble.checkpoint import list_checkpoints
from marble.config import load_config
from marble.distributed import launch, mix_seed, shard
from marble.testing import marble_plugin  # noqa: F401
from marble.trainer import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "dist_child.py")
sys.path.insert(0, HERE)
import dist_child  # noqa: E402

torch.set_num_threads(1)

REWARDS = ["redness", "brightness_t", "contrast_t"]
#: 1-process vs 2-process: the same samples, noise and reductions up to float32 summation order.
TOL = 1e-5


def config(out: str, **train) -> dict:
    # 4 prompts x 3 images, micro-batch 4: three rollout micro-batches, two on rank 0 and one on
    # rank 1, so prompt group 2 (samples 6-8) straddles the ranks.
    t = {"iterations": 4, "prompts_per_iteration": 4, "group_size": 3, "num_steps": 4,
         "timesteps_per_sample": 2, "micro_batch": 4, "optimizer_steps": 2, "beta": 0.1, "lr": 1e-3,
         "save_every": 2, "eval_every": 2, "eval_prompts_count": 2, "progress": False}
    t.update(train)
    return {
        "output_dir": out,
        "backbone": {"name": "sd3-tiny", "args": {"resolution": 32}},
        "rewards": [{"name": n, "weight": 1.0} for n in REWARDS],
        "balancer": {"name": "marble", "args": {"refresh_every": 2}},
        "prompts": [{"texts": ["a bright red apple", "a dark red rose", "a bright sunny field", "a red car"]}],
        "eval_prompts": [{"texts": ["a bright red kite", "a red barn"]}],
        "train": t,
    }


def write_config(path, data) -> str:
    OmegaConf.save(OmegaConf.create(data), str(path))
    return str(path)


def run2(cfg_path: str, overrides=(), trace=None, timeout=150, **env) -> tuple[int, float]:
    old = dict(os.environ)
    os.environ.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env})
    if trace is not None:
        os.makedirs(trace, exist_ok=True)
        os.environ["MARBLE_TEST_TRACE"] = str(trace)
    try:
        t0 = time.monotonic()
        code = launch(cfg_path, list(overrides), 2, entry=[CHILD], timeout=timeout)
        return code, time.monotonic() - t0
    finally:
        os.environ.clear()
        os.environ.update(old)


def state(run: str, name: str | None = None) -> dict:
    ckpt = list_checkpoints(run)[-1] if name is None else os.path.join(run, name)
    return torch.load(os.path.join(ckpt, "state.pt"), weights_only=False)


def metrics(run: str) -> list[dict]:
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture
def plugin(marble_plugin):
    marble_plugin(dist_child.Plugin(), name="dist-test")


@pytest.fixture(scope="module")
def two_proc(tmp_path_factory):
    """One 2-process run of 4 iterations (checkpoints at 2 and 4), traced per rank."""
    root = tmp_path_factory.mktemp("dist")
    cfg = write_config(root / "c.yaml", config(str(root / "run2")))
    code, _ = run2(cfg, trace=root / "trace")
    assert code == 0, "the 2-process run failed (see the captured output)"
    return {"root": root, "cfg": cfg, "run": str(root / "run2"), "trace": root / "trace"}


def test_partition_helpers():
    assert [list(shard(5, 2, r)) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [len(shard(3, 4, r)) for r in range(4)] == [1, 1, 1, 0]
    assert sum((list(shard(17, 3, r)) for r in range(3)), []) == list(range(17))
    assert mix_seed(0, 1, 2) != mix_seed(0, 2, 1) and 0 <= mix_seed(2**70, -1) < 2**63


def test_two_processes_agree_and_equal_one_process(two_proc, plugin, tmp_path):
    trace = two_proc["trace"]
    # alpha at every refresh (steps 0, 2, 4, 6), bit-identical on both ranks, and not trivial
    a0 = [json.loads(x) for x in open(trace / "alpha-rank0.jsonl")]
    a1 = [json.loads(x) for x in open(trace / "alpha-rank1.jsonl")]
    assert [x["step"] for x in a0] == [0, 2, 4, 6]
    assert a0 == a1
    assert any(max(x["alpha"]) - min(x["alpha"]) > 1e-3 for x in a0), a0
    # the final adapters, optimizer and balancer state: bit-identical across the ranks
    f0, f1 = (torch.load(trace / f"final-rank{r}.pt", weights_only=False) for r in (0, 1))
    assert f0["world_size"] == f1["world_size"] == 2
    for key in f0["trained"]:
        assert torch.equal(f0["trained"][key], f1["trained"][key]), key
        assert torch.equal(f0["old"][key], f1["old"][key]), key
    assert f0["balancer"] == f1["balancer"]
    # written once, by the main process
    run = two_proc["run"]
    assert [os.path.basename(p) for p in list_checkpoints(run)] == ["checkpoint-000002", "checkpoint-000004"]
    lines = [m for m in metrics(run) if "reward/redness/mean" in m]
    assert [m["iteration"] for m in lines] == [1, 2, 3, 4]
    assert os.path.isfile(os.path.join(run, "lora", "pytorch_lora_weights.safetensors"))
    s2 = state(run)
    for key in s2["trained"]:
        assert torch.equal(s2["trained"][key], f0["trained"][key])

    # the same global batch and seed in one process
    one = load_config(None, data=config(str(tmp_path / "run1")))
    Trainer(one).train()
    s1 = state(one.output_dir)
    d_trained, d_old = max_diff(s1["trained"], s2["trained"]), max_diff(s1["old"], s2["old"])
    print(f"\n1-process vs 2-process max abs difference: trained {d_trained:.3e}, old {d_old:.3e}")
    assert d_trained < TOL and d_old < TOL
    assert any(not torch.equal(s1["trained"][k], Trainer(load_config(None, data=config(str(tmp_path / "x"))))
                               .backbone.adapter_state("trained")[k]) for k in s1["trained"]), "nothing trained"
    for (b1, b2) in ((s1["balancer"], s2["balancer"]),):
        assert b1["refreshes"] == b2["refreshes"] == 4
        assert max(abs(x - y) for x, y in zip(b1["alpha_bar"], b2["alpha_bar"])) < 1e-4
    m1 = [m for m in metrics(one.output_dir) if "reward/redness/mean" in m]
    # the rollout of iteration 1 is the same images: the gathered reward statistics are exact
    for key in ("reward/redness/mean", "reward/brightness_t/mean", "reward/brightness_t/masked_frac",
                "reward/contrast_t/adv_std"):
        assert m1[0][key] == lines[0][key], key
    for x, y in zip(m1, lines):
        for n in REWARDS:
            assert abs(x[f"alpha_bar/{n}"] - y[f"alpha_bar/{n}"]) < 1e-4
            assert abs(x[f"loss/{n}"] - y[f"loss/{n}"]) < 1e-4 * abs(x[f"loss/{n}"])


def test_resume_two_processes_identically_and_with_one(two_proc, plugin, tmp_path):
    """Resume the 2-process run from its iteration-2 checkpoint: with 2 processes bit-identical
    to the uninterrupted run, with 1 process (the state is rank-independent) to float tolerance."""
    full = state(two_proc["run"], "checkpoint-000004")
    part = tmp_path / "part"
    shutil.copytree(two_proc["run"], part)
    shutil.rmtree(part / "checkpoint-000004")
    shutil.copytree(part, tmp_path / "part1")
    code, _ = run2(two_proc["cfg"], [f"resume={part}"])
    assert code == 0
    again = state(str(part))
    assert again["iteration"] == full["iteration"] == 4 and again["step"] == full["step"]
    for key in full["trained"]:
        assert torch.equal(again["trained"][key], full["trained"][key]), key
        assert torch.equal(again["old"][key], full["old"][key]), key
    assert again["balancer"] == full["balancer"]
    assert again["normalizers"] == full["normalizers"]
    for g, h in zip(again["optimizer"]["state"].values(), full["optimizer"]["state"].values()):
        assert torch.equal(g["exp_avg"], h["exp_avg"]) and torch.equal(g["exp_avg_sq"], h["exp_avg_sq"])
    assert [m["iteration"] for m in metrics(str(part)) if "reward/redness/mean" in m] == [1, 2, 3, 4]

    one = load_config(None, data={**config(str(tmp_path / "ignored")), "resume": str(tmp_path / "part1")})
    Trainer(one).train()
    s1 = state(str(tmp_path / "part1"))
    assert s1["iteration"] == 4 and max_diff(s1["trained"], full["trained"]) < TOL


@pytest.mark.parametrize("hard", [False, True], ids=["raises", "dies"])
def test_a_failing_rank_ends_the_job_naming_the_error(tmp_path, capfd, hard):
    """The reward raises (or the process dies) on rank 1 in the second iteration's rollout:
    the job ends promptly, non-zero, with the error and the rank named - no hang."""
    cfg = write_config(tmp_path / "c.yaml", config(str(tmp_path / "run"), iterations=3, eval_every=0))
    env = {"MARBLE_TEST_FAIL_RANK": "1", "MARBLE_TEST_FAIL_AT": "1"}
    if hard:
        env["MARBLE_TEST_FAIL_HARD"] = "1"
    code, took = run2(cfg, timeout=120, **env)
    err = capfd.readouterr().err
    assert code != 0
    assert took < 100, f"took {took:.0f} s"
    if hard:
        assert "distributed training failed" in err
    else:
        assert code == 1  # not a user error: the reward broke
        assert "distributed training failed on rank 1 of 2: RuntimeError: redness scoring service unreachable" in err
        # rank 0 stopped with the same error named, instead of waiting in a collective
        assert "rank 1 failed during the rollout of iteration 2: RuntimeError: redness scoring" in err
    assert not list_checkpoints(str(tmp_path / "run"))


def test_cli_num_processes_with_an_installed_reward(tmp_path, capfd):
    """``marble train CFG ... --num-processes 2`` (the default child: ``-m marble.cli``), with the
    installed JPEG reward of marble-rewards and the shipped tiny config."""
    from marble.cli import main

    root = os.path.dirname(os.path.dirname(HERE))
    out = tmp_path / "cli"
    old = dict(os.environ)
    os.environ.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    try:
        code = main(["train", os.path.join(root, "configs", "tiny.yaml"), f"output_dir={out}", "train.iterations=1",
                     "train.micro_batch=4", "train.progress=false", "backbone.args.resolution=32",
                     "--num-processes", "2"])
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert code == 0, capfd.readouterr().err[-3000:]
    assert [os.path.basename(p) for p in list_checkpoints(str(out))] == ["checkpoint-000001"]
    assert len(metrics(str(out))) == 1


def test_group_loss_noise_two_processes_equal_one(plugin, tmp_path):
    """train.loss_noise=group under data parallelism: a group's shared draw comes from its global
    group id and whole groups go to one optimizer step, so 2 processes (group 2 straddles the
    ranks) train the same adapters as 1."""
    data = config(str(tmp_path / "run2"), iterations=2, eval_every=0, loss_noise="group")
    code, _ = run2(write_config(tmp_path / "c.yaml", data))
    assert code == 0
    one = load_config(None, data=config(str(tmp_path / "run1"), iterations=2, eval_every=0, loss_noise="group"))
    Trainer(one).train()
    s1, s2 = state(one.output_dir), state(str(tmp_path / "run2"))
    assert max_diff(s1["trained"], s2["trained"]) < TOL and max_diff(s1["old"], s2["old"]) < TOL
    base = Trainer(load_config(None, data=config(str(tmp_path / "x")))).backbone.adapter_state("trained")
    assert any(not torch.equal(s1["trained"][k], base[k]) for k in s1["trained"]), "nothing trained"
