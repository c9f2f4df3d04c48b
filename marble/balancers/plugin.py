"""First-party balancers, registered through the same hook a third party uses."""

from __future__ import annotations

from marble._specs import BalancerSpec
from marble.hookspecs import hookimpl
from marble.balancers.args import FixedArgs, MarbleArgs, MarbleFullArgs, WeightedSumArgs


@hookimpl
def marble_register_balancers():
    return [
        BalancerSpec("weighted_sum", "marble.balancers.simple:WeightedSum", WeightedSumArgs,
                     "baseline: raw rewards summed with their weights, then one advantage (Flow-GRPO/DiffusionNFT)"),
        BalancerSpec("fixed", "marble.balancers.simple:Fixed", FixedArgs,
                     "per-reward advantages mixed with fixed coefficients (the reward weights)"),
        BalancerSpec("marble", "marble.balancers.marble:Marble", MarbleArgs,
                     "MARBLE: min-norm QP on normalized per-reward gradients every N steps, amortized in between"),
        BalancerSpec("marble_full", "marble.balancers.marble:MarbleFull", MarbleFullArgs,
                     "MARBLE with a full K-backward refresh every step (no amortization), for comparison"),
    ]
