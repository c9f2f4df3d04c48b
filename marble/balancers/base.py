"""What the trainer asks of a balancer (ALGORITHM.md section 2).

Each optimizer step the trainer asks ``wants_gradients(step)``:

* False: the trainer does ONE backward pass of ``sum_k w_k * loss_k`` with ``w = mix_weights(step)``
  (loss_k = mean NFT loss of reward k over its valid samples; Proposition 1 makes this exact).
* True: the trainer computes the K per-reward gradients g_k (K backward passes, accumulated over
  the step's micro-batches) and calls ``combine(grads)``, which returns the update direction.

``state_dict``/``load_state_dict`` hold everything needed to resume bit-identically.
"""

from __future__ import annotations

from typing import Any


class Balancer:
    #: True: rewards are mixed *raw* (weights applied before one shared normalizer).
    raw_mix: bool = False

    def __init__(self, args: Any = None):
        self.args = args
        self.names: list[str] = []
        self.weights: list[float] = []

    def setup(self, reward_names: list[str], reward_weights: list[float]) -> None:
        """Called once by the trainer with the training rewards and their config weights."""
        self.names = list(reward_names)
        self.weights = [float(w) for w in reward_weights]

    @property
    def k(self) -> int:
        return len(self.names)

    def wants_gradients(self, step: int) -> bool:
        return False

    def mix_weights(self, step: int) -> list[float]:
        """The K weights w_k of the single backward pass at optimizer step ``step``."""
        raise NotImplementedError(f"balancer {type(self).__name__} must implement mix_weights(step)")

    def combine(self, grads, step: int):
        """grads: [K, D] tensor of per-reward gradients -> (direction [D], diagnostics dict)."""
        raise NotImplementedError(f"balancer {type(self).__name__} asked for per-reward gradients "
                                  f"(wants_gradients) but does not implement combine(grads, step)")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
