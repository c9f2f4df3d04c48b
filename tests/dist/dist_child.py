"""The child process of the distributed tests (run by accelerate launch, one per rank).

It registers two conflicting dependency-free rewards in-process, optionally records what each
rank computed (MARBLE's alpha at every refresh, the final adapters) into $MARBLE_TEST_TRACE, and
then runs the unchanged ``marble`` command line: ``python dist_child.py train CFG [overrides]``.

$MARBLE_TEST_FAIL_RANK / $MARBLE_TEST_FAIL_AT make the reward ``redness`` raise on that rank at
that call (0-based), or (with $MARBLE_TEST_FAIL_HARD=1) kill the process outright.
"""

from __future__ import annotations

import json
import os
import sys

import torch

torch.set_num_threads(1)

from marble import RewardOutput, RewardSpec, hookimpl  # noqa: E402


class Redness:
    """Mean red minus mean of green and blue."""

    def __init__(self):
        self.calls = 0

    def score(self, images, prompts, metadata):
        fail_rank = os.environ.get("MARBLE_TEST_FAIL_RANK")
        if fail_rank is not None and os.environ.get("RANK", "0") == fail_rank:
            if self.calls >= int(os.environ.get("MARBLE_TEST_FAIL_AT", "0")):
                if os.environ.get("MARBLE_TEST_FAIL_HARD") == "1":
                    os._exit(17)
                raise RuntimeError("redness scoring service unreachable (injected test failure)")
        self.calls += 1
        x = images.float()
        return RewardOutput((x[:, 0] - 0.5 * (x[:, 1] + x[:, 2])).mean(dim=(1, 2)))


class Brightness:
    """Mean luminance; applies only to 'bright' prompts (a real mask)."""

    def score(self, images, prompts, metadata):
        x = images.float()
        return RewardOutput(x.mean(dim=(1, 2, 3)), torch.tensor(["bright" in p for p in prompts]))


class Contrast:
    """Pixel standard deviation: a third direction, so that MARBLE's alpha is not trivially 1/2."""

    def score(self, images, prompts, metadata):
        return RewardOutput(images.float().flatten(1).std(dim=1))


class Plugin:
    @hookimpl
    def marble_register_rewards(self):
        return [RewardSpec("redness", lambda: Redness(), description="test: redness"),
                RewardSpec("brightness_t", lambda: Brightness(), description="test: brightness"),
                RewardSpec("contrast_t", lambda: Contrast(), description="test: contrast")]


def instrument(folder: str) -> None:
    """Record per rank: alpha at every MARBLE refresh, and the adapters at the end of train()."""
    from marble.balancers.marble import Marble
    from marble.trainer import Trainer

    rank = int(os.environ.get("RANK", "0"))
    combine, train = Marble.combine, Trainer.train

    def traced_combine(self, grads, step):
        direction, diag = combine(self, grads, step)
        with open(os.path.join(folder, f"alpha-rank{rank}.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "alpha": [diag[f"alpha/{n}"] for n in self.names]}) + "\n")
        return direction, diag

    def traced_train(self):
        out = train(self)
        torch.save({"trained": self.backbone.adapter_state("trained"), "old": self.backbone.adapter_state("old"),
                    "optimizer": self.optimizer.state_dict(), "balancer": self.balancer.state_dict(),
                    "world_size": self.dist.world_size, "rank": self.dist.rank},
                   os.path.join(folder, f"final-rank{rank}.pt"))
        return out

    Marble.combine, Trainer.train = traced_combine, traced_train


if __name__ == "__main__":
    from marble.cli import main
    from marble.testing import register_plugin

    with register_plugin(Plugin(), name="dist-test"):
        if os.environ.get("MARBLE_TEST_TRACE"):
            instrument(os.environ["MARBLE_TEST_TRACE"])
        sys.exit(main(sys.argv[1:]))
