"""CPU benchmark of the balancers on sd3-tiny with two conflicting dependency-free rewards.

Prints, for weighted_sum, fixed, marble (N refresh) and marble_full, in ONE process with the same
seed and budget: median iteration / training-phase time, the ratio to weighted_sum, and each
reward's improvement over the first iteration (and the worst one). Only ratios mean anything on
a shared CPU.

    .venv/bin/python benchmarks/bench_balancers.py [--iterations 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile

import torch

from marble import RewardOutput, RewardSpec, hookimpl
from marble.config import load_config
from marble.testing import register_plugin
from marble.trainer import Trainer


class Redness:
    def score(self, images, prompts, metadata):
        x = images.float()
        return RewardOutput((x[:, 0] - 0.5 * (x[:, 1] + x[:, 2])).mean(dim=(1, 2)))


class Brightness:
    def score(self, images, prompts, metadata):
        return RewardOutput(images.float().mean(dim=(1, 2, 3)))


class Smoothness:
    """Negative mean absolute difference of neighbouring pixels (pulls against texture)."""

    def score(self, images, prompts, metadata):
        x = images.float()
        return RewardOutput(-(x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3)) * 10)


class ToyRewards:
    @hookimpl
    def marble_register_rewards(self):
        return [RewardSpec("toy_redness", lambda: Redness(), description="bench: redness"),
                RewardSpec("toy_brightness", lambda: Brightness(), description="bench: brightness"),
                RewardSpec("toy_smoothness", lambda: Smoothness(), description="bench: smoothness")]


def make_trainer(balancer: str, args, out_dir: str) -> Trainer:
    data = {
        "output_dir": f"{out_dir}/{balancer}",
        "backbone": {"name": "sd3-tiny", "args": {"resolution": args.resolution}},
        "rewards": [{"name": "toy_redness"}, {"name": "toy_brightness"}, {"name": "toy_smoothness"}],
        "balancer": {"name": balancer, "args": {"refresh_every": args.refresh_every} if balancer == "marble" else {}},
        "prompts": [{"texts": ["a red apple", "a bright field", "a smooth stone", "a red brick wall"]}],
        "train": {"iterations": args.iterations, "prompts_per_iteration": 4, "group_size": 8, "num_steps": 6,
                  "timesteps_per_sample": 3, "micro_batch": 16, "optimizer_steps": 2, "beta": 0.1,
                  "lr": args.lr, "kl_coef": 0.0, "save_every": 0, "tensorboard": False, "progress": False,
                  "seed": args.seed},
    }
    trainer = Trainer(load_config(None, data=data))
    trainer._prepare_run_dir()
    return trainer


def summarize(balancer: str, trainer: Trainer, logs: list[dict]) -> dict:
    names = trainer.reward_names
    history = [{n: m[f"reward/{n}/mean"] for n in names} for m in logs]
    k = max(2, len(logs) // 4)  # compare the mean of the last k iterations to the first k
    gain = {n: statistics.mean(h[n] for h in history[-k:]) - statistics.mean(h[n] for h in history[:k]) for n in names}
    # rewards live on different scales: express each gain in units of the reward's spread over the run
    scale = {n: (statistics.pstdev([h[n] for h in history]) or 1.0) for n in names}
    rel = {n: gain[n] / scale[n] for n in names}
    return {"balancer": balancer,
            "iteration_s": statistics.median(m["time/rollout"] + m["time/train"] for m in logs[1:]),
            "train_s": statistics.median(m["time/train"] for m in logs[1:]),
            "gain": gain, "gain_rel": rel, "worst_gain_rel": min(rel.values())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--refresh-every", type=int, default=10)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--balancers", default="weighted_sum,fixed,marble,marble_full")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    balancers = args.balancers.split(",")
    with tempfile.TemporaryDirectory() as out, register_plugin(ToyRewards(), name="toy"):
        trainers = {b: make_trainer(b, args, out) for b in balancers}
        logs: dict[str, list] = {b: [] for b in balancers}
        # Interleaved: iteration i of every balancer runs back to back, so machine load hits all alike.
        for it in range(args.iterations):
            for b in balancers:
                logs[b].append(trainers[b].train_iteration(it))
            print(f"  iteration {it + 1}/{args.iterations}", file=sys.stderr)
        results = [summarize(b, trainers[b], logs[b]) for b in balancers]
    base = next((r for r in results if r["balancer"] == "weighted_sum"), results[0])
    print(f"{'balancer':<14}{'iter s':>9}{'x ws':>7}{'train s':>9}{'x ws':>7}   worst gain   gains (in reward std units)")
    for r in results:
        gains = " ".join(f"{n.replace('toy_', '')}={v:+.2f}" for n, v in r["gain_rel"].items())
        print(f"{r['balancer']:<14}{r['iteration_s']:>9.3f}{r['iteration_s'] / base['iteration_s']:>7.2f}"
              f"{r['train_s']:>9.3f}{r['train_s'] / base['train_s']:>7.2f}   {r['worst_gain_rel']:+10.2f}   {gains}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
