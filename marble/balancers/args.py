"""Args dataclasses of the first-party balancers (validated from the YAML ``balancer.args``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class WeightedSumArgs:
    pass


@dataclass
class FixedArgs:
    normalize: bool = True  # divide the reward weights by their sum


@dataclass
class MarbleArgs:
    refresh_every: int = 10  # N: full K-backward refresh every N optimizer steps (ALGORITHM.md 2.3)
    rho: float = 0.7  # EMA of the coefficients (Eq. 12)
    solver: Optional[str] = None  # cvxpy solver name; None = automatic
    uniform_after: Optional[int] = None  # from this optimizer step on, use uniform alpha (paper's tip)
    ema: str = "alpha"  # what rho averages: "alpha" (Eq. 12), "gram" (the Gram), "gradient" (each g_k)


@dataclass
class MarbleFullArgs:
    rho: float = 0.7
    solver: Optional[str] = None
    use_ema: bool = False  # apply abar instead of the fresh alpha* at every step
    ema: str = "alpha"  # what rho averages: "alpha" (Eq. 12), "gram" (the Gram), "gradient" (each g_k)
