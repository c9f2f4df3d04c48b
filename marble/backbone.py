"""The policy contract: what the trainer asks of a backbone plugin.

A backbone wraps one text-to-image flow-matching model plus two LoRA adapters:

* ``"trained"`` - the adapter the optimizer updates (theta),
* ``"old"``     - the rollout policy (theta_old), a soft copy of theta (ALGORITHM.md 1.8),
* ``"reference"`` - adapters disabled: the base model (used by the KL term).

Conventions (ALGORITHM.md 1.5): time ``t`` in [0, 1], ``x_t = (1 - t) * x0 + t * eps`` and the
model predicts the velocity ``v = eps - x0``. Latents are whatever the backbone's ``velocity``
takes (SD3: N x C x h x w scaled VAE latents; FLUX: packed tokens).

``cond`` (from ``encode_prompts``) is a dict of tensors, every value batch-first (dim 0 is the
sample), so the trainer can select rows with ``{k: v[idx] for k, v in cond.items()}``.

Nothing here imports torch at module level.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

Adapter = Literal["trained", "old", "reference"]


@dataclass
class Rollout:
    """What ``Backbone.sample`` returns.

    latents:   clean latents x0 (the last ODE state), shape the backbone's ``velocity`` takes.
    timesteps: 1-D float tensor, the sampler's times in (0, 1], descending (t=1 is pure noise).
    images:    float tensor N x 3 x H x W in [0, 1] (decoded latents).
    """

    latents: Any
    timesteps: Any
    images: Any


class Backbone(ABC):
    """Base class for backbones. Subclasses implement every abstract method.

    Attributes every backbone sets: ``device`` (torch.device) and ``dtype`` (compute dtype).
    """

    device: Any
    dtype: Any

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> dict[str, Any]:
        """Encode N prompts into a dict of batch-first tensors (no grad)."""

    @abstractmethod
    def sample(
        self,
        cond: dict[str, Any],
        *,
        num_steps: int,
        generator: Any,
        adapter: Adapter = "old",
        guidance_scale: float = 1.0,
        sampler: str = "euler",
    ) -> Rollout:
        """Deterministic flow-ODE sampling from the given adapter (no grad).

        ``generator`` (a torch.Generator on CPU) draws the initial noise, so a seed fixes the
        images. ``guidance_scale`` 1.0 means CFG-free. ``sampler``: "euler" (first order) or
        "dpm2" (second order, DPM-Solver-2-style midpoint)."""

    @abstractmethod
    def velocity(self, x_t: Any, t: Any, cond: dict[str, Any], adapter: Adapter = "trained") -> Any:
        """Predicted velocity at ``x_t`` and times ``t`` (float tensor [N] in [0, 1]).

        Grad flows to the trained adapter only when ``adapter == "trained"``; callers wrap the
        other two in ``torch.no_grad()``. Switching adapters must never change which parameters
        require grad."""

    @abstractmethod
    def trainable_parameters(self) -> list[Any]:
        """The parameters the optimizer updates (the trained adapter), in a fixed order."""

    @abstractmethod
    def soft_update_old(self, eta: float) -> None:
        """theta_old <- eta * theta_old + (1 - eta) * theta (ALGORITHM.md 1.8)."""

    @abstractmethod
    def adapter_state(self, which: Literal["trained", "old"]) -> dict[str, Any]:
        """A copy of one adapter's tensors (for checkpoints)."""

    @abstractmethod
    def load_adapter_state(self, which: Literal["trained", "old"], state: dict[str, Any]) -> None:
        """Load tensors produced by ``adapter_state`` (exact)."""

    @abstractmethod
    def save_lora(self, directory: str) -> None:
        """Write the trained adapter so the ecosystem's own loader reads it, rank and alpha
        intact (for diffusers: ``pipeline.load_lora_weights(directory)``)."""

    def versions(self) -> dict[str, str]:
        """Library versions worth recording in the run folder."""
        return {}
