"""Per-reward advantage normalization (MARBLE arXiv 2605.06507 Eq. 3; ALGORITHM.md 1.3).

For one reward k and a batch of N samples from P prompt groups:

    A_k(x) = (R_k(x) - mean_k(group(x))) / (std_k + eps),     eps = 1e-4

using only the samples where the reward applies (mask m_k(x) = 1).  The mean is always the
mean of the sample's prompt group (over its valid samples).  The std is either

* ``"global"`` (DiffusionNFT's default): population std of the raw valid scores of the whole
  call, or
* ``"group"``: population std of the raw valid scores of the sample's group.

Each reward owns one :class:`AdvantageNormalizer`, which also keeps running statistics
(Welford / Chan et al. parallel merge) of the raw valid scores for logging and resume.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["AdvantageNormalizer"]

_STD_MODES = ("global", "group")


class AdvantageNormalizer:
    """Group-mean / global-or-group-std advantage normalizer for one reward (Eq. 3).

    Args:
        std: ``"global"`` (std over all valid samples of the call) or ``"group"`` (std over
            the sample's prompt group).
        eps: added to the std in the denominator (1e-4 as in both papers).
    """

    def __init__(self, std: str = "global", eps: float = 1e-4) -> None:
        if std not in _STD_MODES:
            raise ValueError(f"std must be one of {_STD_MODES}, got {std!r}")
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a positive finite float, got {eps!r}")
        self.std_mode = std
        self.eps = float(eps)
        # Running statistics of the raw valid scores (Welford).
        self.count: int = 0
        self._mean: float = 0.0
        self._m2: float = 0.0
        self._last: dict[str, float] = {}

    # ------------------------------------------------------------------ running stats
    @property
    def running_mean(self) -> float:
        """Mean of all raw valid scores seen so far (0.0 before any)."""
        return self._mean

    @property
    def running_std(self) -> float:
        """Population std of all raw valid scores seen so far (0.0 before any)."""
        if self.count == 0:
            return 0.0
        return math.sqrt(max(self._m2, 0.0) / self.count)

    def _update_running(self, valid_scores: Tensor) -> None:
        n_b = int(valid_scores.numel())
        if n_b == 0:
            return
        mean_b = float(valid_scores.mean())
        m2_b = float(((valid_scores - mean_b) ** 2).sum())
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self._mean
        # Chan, Golub & LeVeque pairwise merge of (count, mean, M2).
        self._mean = self._mean + delta * n_b / n
        self._m2 = self._m2 + m2_b + delta * delta * n_a * n_b / n
        self.count = n

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: running count, mean, M2 (plain Python numbers)."""
        return {"count": int(self.count), "mean": float(self._mean), "m2": float(self._m2)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the running statistics written by :meth:`state_dict`."""
        try:
            count = int(state["count"])
            mean = float(state["mean"])
            m2 = float(state["m2"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"invalid AdvantageNormalizer state: {state!r}") from e
        if count < 0 or m2 < 0 or not math.isfinite(mean) or not math.isfinite(m2):
            raise ValueError(f"invalid AdvantageNormalizer state: {state!r}")
        self.count, self._mean, self._m2 = count, mean, m2

    def stats(self) -> dict[str, float]:
        """Statistics of the last call for logging.

        Keys: ``valid_frac`` (fraction of masked-in samples), ``raw_mean`` / ``raw_std``
        (of the valid raw scores), ``adv_mean`` / ``adv_std`` (population, of the valid
        samples' advantages), ``n_valid``, plus the running mean/std/count.
        When nothing was valid every value is 0.0 (check ``n_valid``); never NaN.
        """
        out = dict(self._last)
        out.update(
            running_mean=self.running_mean, running_std=self.running_std, count=float(self.count)
        )
        return out

    # ------------------------------------------------------------------ normalization
    def __call__(self, scores: Tensor, groups: Tensor, mask: Tensor | None = None) -> Tensor:
        """Normalize one reward's raw scores into advantages (Eq. 3).

        Args:
            scores: raw scores R_k, shape [N].
            groups: prompt-group id of every sample, integer tensor of shape [N] (any ids).
            mask: bool [N], True where the reward applies; None means all valid.

        Returns:
            Advantages, shape [N], dtype of ``scores`` (float32 if it is not floating).
            Masked-out samples and groups with a single valid sample get 0.  Computed in
            float64 internally.
        """
        if scores.ndim != 1:
            raise ValueError(f"scores must have shape [N], got {tuple(scores.shape)}")
        n = scores.shape[0]
        if groups.shape != (n,):
            raise ValueError(f"groups must have shape [{n}], got {tuple(groups.shape)}")
        if groups.is_floating_point() or groups.dtype == torch.bool:
            raise ValueError(f"groups must be an integer tensor, got {groups.dtype}")
        device = scores.device
        if mask is None:
            valid = torch.ones(n, dtype=torch.bool, device=device)
        else:
            if mask.shape != (n,):
                raise ValueError(f"mask must have shape [{n}], got {tuple(mask.shape)}")
            valid = mask.to(device=device, dtype=torch.bool)
        out_dtype = scores.dtype if scores.is_floating_point() else torch.float32

        r = scores.detach().to(torch.float64)
        bad = valid & ~torch.isfinite(r)
        if bool(bad.any()):
            raise ValueError(
                f"non-finite reward scores at valid positions {bad.nonzero().flatten().tolist()}"
            )
        # Zero the masked-out entries so that NaN/inf placeholders cannot leak into sums.
        r = torch.where(valid, r, torch.zeros_like(r))
        vf = valid.to(torch.float64)
        n_valid = int(valid.sum())

        adv = torch.zeros(n, dtype=torch.float64, device=device)
        if n_valid > 0:
            _, inv = torch.unique(groups.to(device), return_inverse=True)
            n_groups = int(inv.max()) + 1
            g_cnt = torch.zeros(n_groups, dtype=torch.float64, device=device).index_add_(0, inv, vf)
            g_sum = torch.zeros(n_groups, dtype=torch.float64, device=device).index_add_(
                0, inv, r * vf
            )
            g_mean = g_sum / g_cnt.clamp_min(1.0)
            centered = (r - g_mean[inv]) * vf
            if self.std_mode == "global":
                mu = r[valid].mean()
                std = torch.sqrt(((r[valid] - mu) ** 2).mean())
                denom = std + self.eps
            else:
                g_ss = torch.zeros(n_groups, dtype=torch.float64, device=device).index_add_(
                    0, inv, centered * centered
                )
                g_std = torch.sqrt(g_ss / g_cnt.clamp_min(1.0))
                denom = g_std[inv] + self.eps
            adv = centered / denom
            # A group with fewer than two valid samples carries no comparison signal.
            adv = torch.where(valid & (g_cnt[inv] >= 2), adv, torch.zeros_like(adv))

        # Logging statistics and running update (raw valid scores only).
        valid_scores = r[valid]
        if n_valid > 0:
            a_valid = adv[valid]
            self._last = {
                "valid_frac": n_valid / n if n else 0.0,
                "n_valid": float(n_valid),
                "raw_mean": float(valid_scores.mean()),
                "raw_std": float(valid_scores.std(unbiased=False)),
                "adv_mean": float(a_valid.mean()),
                "adv_std": float(a_valid.std(unbiased=False)),
            }
        else:
            self._last = {
                "valid_frac": 0.0,
                "n_valid": 0.0,
                "raw_mean": 0.0,
                "raw_std": 0.0,
                "adv_mean": 0.0,
                "adv_std": 0.0,
            }
        self._update_running(valid_scores)
        return adv.to(out_dtype)

    def __repr__(self) -> str:
        return (
            f"AdvantageNormalizer(std={self.std_mode!r}, eps={self.eps}, count={self.count}, "
            f"running_mean={self.running_mean:.6g}, running_std={self.running_std:.6g})"
        )
