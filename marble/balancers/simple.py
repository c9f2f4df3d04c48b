"""The baselines: weighted sum of raw rewards, and fixed coefficients on per-reward advantages."""

from __future__ import annotations

from marble.balancers.base import Balancer


class WeightedSum(Balancer):
    """ALGORITHM.md 2.1: sum raw rewards with their weights, then ONE advantage normalizer.

    The trainer builds the single mixed reward R = sum_k w_k m_k R_k (a reward that does not apply
    to a sample contributes nothing) and trains on it with one backward pass."""

    raw_mix = True

    def mix_weights(self, step: int) -> list[float]:
        return [1.0]


class Fixed(Balancer):
    """Per-reward advantages, mixed with fixed coefficients (the reward weights)."""

    def mix_weights(self, step: int) -> list[float]:
        if self.args is not None and self.args.normalize:
            total = sum(self.weights)
            if total <= 0:
                return [1.0 / self.k] * self.k
            return [w / total for w in self.weights]
        return list(self.weights)
