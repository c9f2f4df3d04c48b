"""DiffusionNFT loss (arXiv 2509.16117), as used by MARBLE (arXiv 2605.06507, Eq. 2).

The trainer regresses in x0 space, exactly as the DiffusionNFT reference code does
(see docs/ALGORITHM.md section 1, steps 4 and 6):

* implicit positive policy  v+ = (1 - beta) v_old + beta v_theta
* implicit negative policy  v- = (1 + beta) v_old - beta v_theta
* x0_hat = x_t - t * v  (rectified-flow convention x_t = (1 - t) x0 + t eps, v = eps - x0)
* each branch's squared error is divided by its own per-sample, stop-gradient mean absolute
  error (the "adaptive weighting" of the DiffusionNFT code), computed in float64 and
  clamped to >= 1e-5
* l(r) = (A_max / beta) * (r * L+ + (1 - r) * L-)                               (Eq. 2)

The loss is affine in the optimality probability r.  MARBLE's amortization (Proposition 1,
ALGORITHM.md 2.3) relies on that: ``sum_k w_k grad l(r_k) = W grad l(sum_k w_k r_k / W)``.
Nothing in this module applies a batch-dependent transform to r, so the identity holds.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "optimality_probability",
    "nft_branch_losses",
    "nft_loss",
    "nft_loss_from_coefficients",
    "kl_loss",
    "ADAPTIVE_WEIGHT_MIN",
]

#: Lower clamp of the adaptive (stop-gradient) weight, as in the DiffusionNFT code.
ADAPTIVE_WEIGHT_MIN = 1e-5


def _check_beta_amax(beta: float, a_max: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta (NFT strength) must be > 0, got {beta!r}")
    if not a_max > 0:
        raise ValueError(f"a_max (advantage clip) must be > 0, got {a_max!r}")


def optimality_probability(advantages: Tensor, a_max: float = 5.0) -> Tensor:
    """Map advantages to optimality probabilities (ALGORITHM.md 1.4).

    ``r = clamp(1/2 + clip(A, -a_max, a_max) / (2 a_max), 0, 1)``.

    Args:
        advantages: tensor of any shape (normalized advantages, Eq. 3).
        a_max: advantage clip A_max (5 in both papers).

    Returns:
        Tensor of the same shape and (floating) dtype with values in [0, 1].
    """
    if not a_max > 0:
        raise ValueError(f"a_max (advantage clip) must be > 0, got {a_max!r}")
    a = advantages if advantages.is_floating_point() else advantages.to(torch.get_default_dtype())
    r = 0.5 + a.clamp(-a_max, a_max) / (2.0 * a_max)
    return r.clamp(0.0, 1.0)


def _reduce_dims(x: Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def _adaptive_branch_loss(x0_hat: Tensor, x0: Tensor) -> Tensor:
    """Per-sample ``mean((x0_hat - x0)^2) / sg(mean|x0_hat - x0|)`` (DiffusionNFT weighting)."""
    dims = _reduce_dims(x0)
    err = x0_hat - x0
    with torch.no_grad():
        # Stop-gradient adaptive weight, float64 like the reference implementation.
        w = err.detach().double().abs().mean(dim=dims).clamp_min(ADAPTIVE_WEIGHT_MIN)
    if dims:
        sq = err.pow(2).mean(dim=dims)
    else:  # scalar per sample
        sq = err.pow(2)
    return sq / w.to(sq.dtype)


def nft_branch_losses(
    v_theta: Tensor,
    v_old: Tensor,
    x_t: Tensor,
    x0: Tensor,
    t: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor]:
    """Per-sample positive and negative branch losses of Eq. 2 (x0 space, adaptive weights).

    Args:
        v_theta: velocity of the trained policy, shape [N, ...] (carries the gradient).
        v_old: velocity of the old (rollout) policy, same shape; treated as a constant.
        x_t: noised latents ``(1 - t) x0 + t eps``, same shape.
        x0: clean latents, same shape.
        t: timesteps in [0, 1], shape [N] (broadcast over the non-batch dims).
        beta: NFT strength (> 0).

    Returns:
        ``(L_pos, L_neg)``, each of shape [N], *unscaled* (no A_max / beta factor):
        ``L± = mean((x0_hat± - x0)^2) / sg(max(mean|x0_hat± - x0|, 1e-5))`` with
        ``x0_hat± = x_t - t v±``, ``v+ = (1-beta) v_old + beta v_theta``,
        ``v- = (1+beta) v_old - beta v_theta``.

        The loss dtype is the promoted dtype of the inputs, at least float32 (float64
        inputs give float64; half-precision inputs are upcast to float32).
    """
    if not beta > 0:
        raise ValueError(f"beta (NFT strength) must be > 0, got {beta!r}")
    if v_theta.shape != v_old.shape or v_theta.shape != x_t.shape or v_theta.shape != x0.shape:
        raise ValueError(
            "v_theta, v_old, x_t and x0 must have the same shape, got "
            f"{tuple(v_theta.shape)}, {tuple(v_old.shape)}, {tuple(x_t.shape)}, {tuple(x0.shape)}"
        )
    n = v_theta.shape[0]
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"t must have shape [N]=[{n}], got {tuple(t.shape)}")
    # Compute in the promoted dtype of the inputs, at least float32 (bf16 model outputs are
    # upcast; float64 stays float64).
    ct = torch.promote_types(torch.promote_types(v_theta.dtype, v_old.dtype), x_t.dtype)
    ct = torch.promote_types(torch.promote_types(ct, x0.dtype), torch.float32)
    v_theta, v_old, x_t, x0 = v_theta.to(ct), v_old.detach().to(ct), x_t.to(ct), x0.to(ct)
    t_b = t.reshape(n, *([1] * (v_theta.ndim - 1))).to(ct)
    # Implicit policies of Eq. 2.
    v_pos = (1.0 - beta) * v_old + beta * v_theta
    v_neg = (1.0 + beta) * v_old - beta * v_theta
    # x0 prediction of the flow model: x0_hat = x_t - t v.
    x0_pos = x_t - t_b * v_pos
    x0_neg = x_t - t_b * v_neg
    return _adaptive_branch_loss(x0_pos, x0), _adaptive_branch_loss(x0_neg, x0)


def nft_loss(
    v_theta: Tensor,
    v_old: Tensor,
    x_t: Tensor,
    x0: Tensor,
    t: Tensor,
    r: Tensor,
    beta: float,
    a_max: float = 5.0,
) -> Tensor:
    """Per-sample DiffusionNFT loss (Eq. 2): ``(a_max / beta) (r L+ + (1 - r) L-)``.

    ``r`` ([N], in [0, 1]) is the optimality probability (:func:`optimality_probability`).
    Returns a tensor of shape [N]; reduce it (mean over valid samples) in the caller.
    """
    _check_beta_amax(beta, a_max)
    l_pos, l_neg = nft_branch_losses(v_theta, v_old, x_t, x0, t, beta)
    r = r.to(l_pos.dtype)
    if r.shape != l_pos.shape:
        raise ValueError(f"r must have shape {tuple(l_pos.shape)}, got {tuple(r.shape)}")
    return (a_max / beta) * (r * l_pos + (1.0 - r) * l_neg)


def nft_loss_from_coefficients(
    L_pos: Tensor,
    L_neg: Tensor,
    c_pos: Tensor,
    c_neg: Tensor,
    beta: float,
    a_max: float = 5.0,
) -> Tensor:
    """Scalar ``(a_max / beta) * sum_i (c_pos_i L_pos_i + c_neg_i L_neg_i)``.

    The trainer builds the per-sample coefficients itself; they already contain reward
    weights, masks and the averaging (e.g. for one reward k with valid mask m_k and
    n_k valid samples: ``c_pos = m_k r_k / n_k``, ``c_neg = m_k (1 - r_k) / n_k``; for
    the amortized MARBLE step a weighted sum of such coefficients over k, which is
    exact because the loss is affine in r, Proposition 1).
    """
    _check_beta_amax(beta, a_max)
    if not (L_pos.shape == L_neg.shape == c_pos.shape == c_neg.shape):
        raise ValueError(
            "L_pos, L_neg, c_pos, c_neg must have the same shape, got "
            f"{tuple(L_pos.shape)}, {tuple(L_neg.shape)}, {tuple(c_pos.shape)}, {tuple(c_neg.shape)}"
        )
    dt = L_pos.dtype
    return (a_max / beta) * (c_pos.to(dt) * L_pos + c_neg.to(dt) * L_neg).sum()


def kl_loss(v_theta: Tensor, v_ref: Tensor) -> Tensor:
    """Per-sample KL surrogate ``mean over non-batch dims of (v_theta - v_ref)^2`` ([N]).

    ``v_ref`` (adapters disabled) is treated as a constant.  The trainer multiplies by
    ``kl_coef`` and adds it outside any balancing (ALGORITHM.md 1.6, Eq. 8).  Half-precision
    inputs give a float32 result.
    """
    if v_theta.shape != v_ref.shape:
        raise ValueError(f"shape mismatch: {tuple(v_theta.shape)} vs {tuple(v_ref.shape)}")
    diff = v_theta - v_ref.detach()
    if diff.dtype in (torch.float16, torch.bfloat16):
        diff = diff.float()  # accumulate half-precision outputs in float32
    d = diff.pow(2)
    dims = _reduce_dims(d)
    return d.mean(dim=dims) if dims else d
