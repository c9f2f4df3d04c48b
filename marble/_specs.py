"""Typed records that plugins return from their hooks, and the reward contract.

Nothing here imports torch: listing plugins must stay light.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, Union, runtime_checkable

Factory = Union[Callable[..., Any], str]


def resolve_factory(factory: Factory) -> Callable[..., Any]:
    """Turn a lazy ``"module:attr"`` string into the callable it names."""
    if callable(factory):
        return factory
    if not isinstance(factory, str) or ":" not in factory:
        raise TypeError(f"factory must be a callable or a 'module:attr' string, got {factory!r}")
    module_name, _, attr = factory.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class _Spec:
    name: str
    factory: Factory
    args: type | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"{type(self).__name__}.name must be a non-empty string, got {self.name!r}")
        if not (callable(self.factory) or (isinstance(self.factory, str) and ":" in self.factory)):
            raise TypeError(
                f"{type(self).__name__} '{self.name}': factory must be a callable or a "
                f"'module:attr' string, got {self.factory!r}"
            )
        if self.args is not None and not dataclasses.is_dataclass(self.args):
            raise TypeError(f"{type(self).__name__} '{self.name}': args must be a dataclass type, got {self.args!r}")

    def build(self, args: Any) -> Any:
        """Call the factory: with the validated dataclass instance if ``args`` is declared,
        else with the raw mapping as keyword arguments."""
        fn = resolve_factory(self.factory)
        if self.args is not None:
            return fn(args)
        return fn(**dict(args or {}))


@dataclass(frozen=True)
class RewardSpec(_Spec):
    """A reward model a plugin offers.

    ``factory(args)`` returns an object with ``score(images, prompts, metadata) -> RewardOutput``.
    """


@dataclass(frozen=True)
class BackboneSpec(_Spec):
    """A policy backbone (diffusion model + adapters) a plugin offers.

    ``tiny_args``: args (a mapping) that build a small offline variant for tests, if any.
    """

    tiny_args: dict | None = None


@dataclass(frozen=True)
class BalancerSpec(_Spec):
    """A way to turn K per-reward signals into one update (see marble.balancers)."""


@dataclass
class RewardOutput:
    """What a reward returns: ``scores`` float tensor [N]; ``mask`` bool tensor [N] or None.

    ``mask[i]`` is False where the reward does not apply to sample i (its score is ignored).
    None means the reward applies to every sample.
    """

    scores: Any
    mask: Any = None


@runtime_checkable
class Reward(Protocol):
    """The reward contract.

    ``images``: float tensor N x 3 x H x W in [0, 1]; ``prompts``: N strings;
    ``metadata``: N dicts (the prompt source's fields). Returns ``RewardOutput``.
    Rewards are stateless between calls.
    """

    def score(self, images: Any, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput: ...


@dataclass
class PluginInfo:
    """One entry point as the host saw it (for ``marble plugins``)."""

    name: str
    distribution: str
    version: str
    module: str
    status: str = "ok"  # ok | failed
    error: str | None = None
    traceback: str | None = None
    rewards: list[str] = field(default_factory=list)
    backbones: list[str] = field(default_factory=list)
    balancers: list[str] = field(default_factory=list)
