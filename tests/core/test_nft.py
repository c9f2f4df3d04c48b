"""Tests of marble.nft against hand computations (DiffusionNFT Eq. 2, ALGORITHM.md 1.4-1.6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from marble.nft import (
    kl_loss,
    nft_branch_losses,
    nft_loss,
    nft_loss_from_coefficients,
    optimality_probability,
)

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------
# Independent numpy reference (float64, explicit loops over samples)
# ----------------------------------------------------------------------------------------
def _ref_branches(v_theta, v_old, x_t, x0, t, beta):
    """Returns L_pos, L_neg, w_pos, w_neg, and analytic dL/dv_theta of each branch."""
    v_theta, v_old, x_t, x0 = (np.asarray(a, dtype=np.float64) for a in (v_theta, v_old, x_t, x0))
    n = v_theta.shape[0]
    out = {k: [] for k in ("lp", "ln", "wp", "wn", "gp", "gn")}
    for i in range(n):
        ti = float(t[i])
        vp = (1 - beta) * v_old[i] + beta * v_theta[i]
        vn = (1 + beta) * v_old[i] - beta * v_theta[i]
        ep = (x_t[i] - ti * vp) - x0[i]
        en = (x_t[i] - ti * vn) - x0[i]
        d = ep.size
        wp = max(np.abs(ep).sum() / d, 1e-5)
        wn = max(np.abs(en).sum() / d, 1e-5)
        out["lp"].append((ep**2).sum() / d / wp)
        out["ln"].append((en**2).sum() / d / wn)
        out["wp"].append(wp)
        out["wn"].append(wn)
        # w held constant: d/dv_theta of sum(e^2)/(d w); de+/dv_theta = -t beta, de-/dv_theta = +t beta
        out["gp"].append(2.0 * ep * (-ti * beta) / (d * wp))
        out["gn"].append(2.0 * en * (ti * beta) / (d * wn))
    return {k: np.array(v) for k, v in out.items()}


def _case(n=3, shape=(2, 4), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, *shape, generator=g, dtype=dtype)
    eps = torch.randn(n, *shape, generator=g, dtype=dtype)
    t = torch.rand(n, generator=g, dtype=dtype) * 0.9 + 0.05
    tb = t.reshape(n, *([1] * len(shape)))
    x_t = (1 - tb) * x0 + tb * eps
    v_target = eps - x0
    v_old = v_target + 0.3 * torch.randn(n, *shape, generator=g, dtype=dtype)
    v_theta = v_old + 0.2 * torch.randn(n, *shape, generator=g, dtype=dtype)
    return v_theta, v_old, x_t, x0, t


# ----------------------------------------------------------------------------------------
# optimality probability
# ----------------------------------------------------------------------------------------
def test_optimality_probability_values_and_clipping():
    a = torch.tensor([-100.0, -5.0, -2.5, 0.0, 1.0, 5.0, 7.0, float("inf"), -float("inf")])
    r = optimality_probability(a, a_max=5.0)
    expected = [0.0, 0.0, 0.25, 0.5, 0.6, 1.0, 1.0, 1.0, 0.0]
    assert r.tolist() == pytest.approx(expected, abs=1e-7)
    # another a_max
    r2 = optimality_probability(torch.tensor([-3.0, -1.0, 0.5, 2.0]), a_max=2.0)
    assert r2.tolist() == pytest.approx([0.0, 0.25, 0.625, 1.0])
    assert optimality_probability(torch.tensor([1.0], dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ValueError):
        optimality_probability(a, a_max=0.0)


# ----------------------------------------------------------------------------------------
# branch losses
# ----------------------------------------------------------------------------------------
def test_branch_losses_hand_computed_tiny():
    # N=1, 2 elements, beta=0.5, t=0.5, fully by hand.
    v_theta = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    v_old = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    x_t = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    x0 = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([0.5], dtype=torch.float64)
    # v+ = 0.5*v_old + 0.5*v_theta = [0.5, 1.5];  x0_hat+ = [1-0.25, 1-0.75] = [0.75, 0.25]
    # w+ = (0.75+0.25)/2 = 0.5;  L+ = ((0.5625+0.0625)/2)/0.5 = 0.625
    # v- = 1.5*v_old - 0.5*v_theta = [-0.5, 0.5]; x0_hat- = [1.25, 0.75]
    # w- = 1.0; L- = ((1.5625+0.5625)/2)/1 = 1.0625
    lp, ln = nft_branch_losses(v_theta, v_old, x_t, x0, t, beta=0.5)
    assert lp.shape == (1,) and ln.shape == (1,)
    assert lp.item() == pytest.approx(0.625, rel=1e-14)
    assert ln.item() == pytest.approx(1.0625, rel=1e-14)
    # nft_loss with r=0.25, a_max=5: (5/0.5)*(0.25*0.625 + 0.75*1.0625) = 10*0.953125
    loss = nft_loss(v_theta, v_old, x_t, x0, t, torch.tensor([0.25], dtype=torch.float64), 0.5, 5.0)
    assert loss.item() == pytest.approx(9.53125, rel=1e-14)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_branch_losses_and_gradients_vs_reference(beta):
    v_theta, v_old, x_t, x0, t = _case(n=4, shape=(3, 2, 2), seed=1)
    v_theta = v_theta.clone().requires_grad_(True)
    v_old = v_old.clone().requires_grad_(True)  # must be treated as a constant
    lp, ln = nft_branch_losses(v_theta, v_old, x_t, x0, t, beta)
    ref = _ref_branches(v_theta.detach(), v_old.detach(), x_t, x0, t, beta)
    np.testing.assert_allclose(lp.detach().numpy(), ref["lp"], rtol=1e-12)
    np.testing.assert_allclose(ln.detach().numpy(), ref["ln"], rtol=1e-12)

    # Gradient of each branch with the adaptive weight held constant (stop-gradient).
    (gp,) = torch.autograd.grad(lp.sum(), v_theta, retain_graph=True)
    np.testing.assert_allclose(gp.numpy(), ref["gp"], rtol=1e-11, atol=1e-14)
    (gn,) = torch.autograd.grad(ln.sum(), v_theta, retain_graph=True)
    np.testing.assert_allclose(gn.numpy(), ref["gn"], rtol=1e-11, atol=1e-14)

    # v_old is detached: no gradient flows to it.
    (g_old,) = torch.autograd.grad(lp.sum() + ln.sum(), v_old, allow_unused=True)
    assert g_old is None or torch.count_nonzero(g_old) == 0

    # Full per-sample loss and its gradient: (a_max/beta)(r dL+ + (1-r) dL-).
    r = torch.tensor([0.0, 0.3, 0.5, 1.0], dtype=torch.float64)
    a_max = 5.0
    loss = nft_loss(v_theta, v_old, x_t, x0, t, r, beta, a_max)
    rn = r.numpy()
    exp_loss = (a_max / beta) * (rn * ref["lp"] + (1 - rn) * ref["ln"])
    np.testing.assert_allclose(loss.detach().numpy(), exp_loss, rtol=1e-12)
    (g,) = torch.autograd.grad(loss.sum(), v_theta)
    rb = rn.reshape(-1, 1, 1, 1)
    exp_g = (a_max / beta) * (rb * ref["gp"] + (1 - rb) * ref["gn"])
    np.testing.assert_allclose(g.numpy(), exp_g, rtol=1e-11, atol=1e-13)


def test_adaptive_weight_is_stop_gradient_not_differentiated():
    """If w were differentiated, d/dv (e^2/|e|) = sign(e) != 2e/w; check the difference shows."""
    v_theta = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    v_old = torch.zeros(1, 3, dtype=torch.float64)
    x0 = torch.zeros(1, 3, dtype=torch.float64)
    x_t = torch.tensor([[1.0, 2.0, -3.0]], dtype=torch.float64)
    t = torch.tensor([1.0], dtype=torch.float64)
    lp, _ = nft_branch_losses(v_theta, v_old, x_t, x0, t, beta=1.0)
    (g,) = torch.autograd.grad(lp.sum(), v_theta)
    # e = x_t - v = [1,2,-3]; w = 2; L = mean(e^2)/w = (14/3)/2; dL/dv = -2 e / (3 w) = -e/3
    assert lp.item() == pytest.approx(14.0 / 6.0)
    np.testing.assert_allclose(g.numpy(), [[-1 / 3, -2 / 3, 1.0]], rtol=1e-14)


def test_adaptive_weight_clamp():
    # Perfect prediction: error 0 -> w clamped to 1e-5 -> loss 0, finite gradient 0.
    x0 = torch.randn(2, 5, dtype=torch.float64)
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    v = torch.randn(2, 5, dtype=torch.float64)
    x_t = x0 + t[:, None] * v  # so x_t - t v = x0 exactly for v_theta = v_old = v
    vt = v.clone().requires_grad_(True)
    lp, ln = nft_branch_losses(vt, v, x_t, x0, t, beta=0.1)
    assert torch.all(lp.abs() < 1e-25) and torch.all(ln.abs() < 1e-25)
    (g,) = torch.autograd.grad((lp + ln).sum(), vt)
    assert torch.isfinite(g).all()
    # Small error of size 1e-7: w = clamp(1e-7, 1e-5) = 1e-5 -> L = 1e-14 / 1e-5 = 1e-9
    x_t2 = x_t + 1e-7
    lp2, _ = nft_branch_losses(v, v, x_t2, x0, t, beta=0.1)
    np.testing.assert_allclose(lp2.numpy(), [1e-9, 1e-9], rtol=1e-6)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_affine_in_r_values_and_gradients(beta):
    v_theta, v_old, x_t, x0, t = _case(n=5, shape=(4, 3), seed=2)
    v_theta = v_theta.clone().requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    r1 = torch.rand(5, generator=g, dtype=torch.float64)
    r2 = torch.rand(5, generator=g, dtype=torch.float64)
    a = 0.37

    def val_grad(r):
        l = nft_loss(v_theta, v_old, x_t, x0, t, r, beta)
        (gr,) = torch.autograd.grad(l.sum(), v_theta)
        return l.detach(), gr

    lm, gm = val_grad(a * r1 + (1 - a) * r2)
    l1, g1 = val_grad(r1)
    l2, g2 = val_grad(r2)
    torch.testing.assert_close(lm, a * l1 + (1 - a) * l2, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(gm, a * g1 + (1 - a) * g2, rtol=1e-12, atol=1e-13)
    # also outside [0, 1] weights (affine, not only convex): 2 r1 - r2
    l3, g3 = val_grad(2 * r1 - r2)
    torch.testing.assert_close(l3, 2 * l1 - l2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g3, 2 * g1 - g2, rtol=1e-12, atol=1e-12)


def test_r_extremes_pick_branches_and_scale():
    beta, a_max = 0.25, 4.0
    v_theta, v_old, x_t, x0, t = _case(n=3, shape=(6,), seed=4)
    lp, ln = nft_branch_losses(v_theta, v_old, x_t, x0, t, beta)
    ones = torch.ones(3, dtype=torch.float64)
    l1 = nft_loss(v_theta, v_old, x_t, x0, t, ones, beta, a_max)
    l0 = nft_loss(v_theta, v_old, x_t, x0, t, 0 * ones, beta, a_max)
    lh = nft_loss(v_theta, v_old, x_t, x0, t, 0.5 * ones, beta, a_max)
    torch.testing.assert_close(l1, (a_max / beta) * lp, rtol=1e-14, atol=0)
    torch.testing.assert_close(l0, (a_max / beta) * ln, rtol=1e-14, atol=0)
    torch.testing.assert_close(lh, (a_max / beta) * 0.5 * (lp + ln), rtol=1e-14, atol=0)
    # r from advantages beyond the clip equals r at the clip
    adv = torch.tensor([-50.0, 4.0, 1e6], dtype=torch.float64)
    r = optimality_probability(adv, a_max)
    torch.testing.assert_close(r, torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64))


def test_at_r_half_gradient_pulls_toward_v_old_for_small_beta():
    """Sanity of Eq. 2: at v_theta = v_old and r = 1/2 the two branches are mirror images;
    the gradient is O(beta) times the curvature term and vanishes as beta -> 0 relative to
    the r=1 gradient."""
    v_theta, v_old, x_t, x0, t = _case(n=2, shape=(8,), seed=5)
    vt = v_old.clone().requires_grad_(True)
    beta = 1e-4
    half = torch.full((2,), 0.5, dtype=torch.float64)
    (g_half,) = torch.autograd.grad(nft_loss(vt, v_old, x_t, x0, t, half, beta).sum(), vt)
    (g_one,) = torch.autograd.grad(nft_loss(vt, v_old, x_t, x0, t, 2 * half, beta).sum(), vt)
    assert g_half.norm() < 1e-2 * g_one.norm()


def test_float32_and_float64_agree_and_half_upcast():
    v_theta, v_old, x_t, x0, t = _case(n=3, shape=(4, 4), seed=6)
    lp64, ln64 = nft_branch_losses(v_theta, v_old, x_t, x0, t, 0.1)
    assert lp64.dtype == torch.float64
    args32 = [a.float() for a in (v_theta, v_old, x_t, x0, t)]
    lp32, ln32 = nft_branch_losses(*args32, 0.1)
    assert lp32.dtype == torch.float32
    torch.testing.assert_close(lp32.double(), lp64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ln32.double(), ln64, rtol=1e-5, atol=1e-6)
    args16 = [a.bfloat16() for a in (v_theta, v_old, x_t, x0)] + [t.float()]
    lp16, _ = nft_branch_losses(*args16, 0.1)
    assert lp16.dtype == torch.float32 and torch.isfinite(lp16).all()


def test_loss_from_coefficients_matches_per_reward_means():
    """Coefficients for K rewards with masks, combined with weights, equal the weighted sum
    of the per-reward masked means of the per-sample loss (Prop. 1 bookkeeping)."""
    beta, a_max = 0.1, 5.0
    v_theta, v_old, x_t, x0, t = _case(n=6, shape=(5,), seed=7)
    v_theta = v_theta.clone().requires_grad_(True)
    g = torch.Generator().manual_seed(8)
    r = torch.rand(2, 6, generator=g, dtype=torch.float64)
    m = torch.tensor([[1, 1, 0, 1, 0, 1], [0, 1, 1, 1, 1, 1]], dtype=torch.float64)
    w = torch.tensor([0.7, 1.9], dtype=torch.float64)
    lp, ln = nft_branch_losses(v_theta, v_old, x_t, x0, t, beta)
    n_k = m.sum(1, keepdim=True)
    c_pos = (w[:, None] * m * r / n_k).sum(0)
    c_neg = (w[:, None] * m * (1 - r) / n_k).sum(0)
    total = nft_loss_from_coefficients(lp, ln, c_pos, c_neg, beta, a_max)
    assert total.ndim == 0
    (g_tot,) = torch.autograd.grad(total, v_theta)
    # reference: explicit per-reward masked means, one backward each
    exp_val = 0.0
    exp_grad = torch.zeros_like(v_theta)
    for k in range(2):
        per = nft_loss(v_theta, v_old, x_t, x0, t, r[k], beta, a_max)
        lk = sum(per[i] for i in range(6) if m[k, i] > 0) / float(m[k].sum())
        (gk,) = torch.autograd.grad(lk, v_theta)
        exp_val += float(w[k]) * lk.item()
        exp_grad += w[k] * gk
    assert total.item() == pytest.approx(exp_val, rel=1e-13)
    torch.testing.assert_close(g_tot, exp_grad, rtol=1e-12, atol=1e-14)


def test_kl_loss():
    a = torch.tensor([[1.0, 2.0], [0.0, -1.0]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    k = kl_loss(a, b)
    assert k.tolist() == pytest.approx([2.5, 2.5])
    (ga, gb) = torch.autograd.grad(k.sum(), (a, b), allow_unused=True)
    # d/da mean((a-b)^2) = (a - b) (2/2 elements)
    np.testing.assert_allclose(ga.numpy(), [[1.0, 2.0], [-1.0, -2.0]])
    assert gb is None or torch.count_nonzero(gb) == 0
    kb = kl_loss(a.detach().bfloat16(), b.detach().bfloat16())
    assert kb.dtype == torch.float32 and kb.tolist() == pytest.approx([2.5, 2.5])


def test_input_validation():
    v = torch.zeros(2, 3)
    t = torch.zeros(2)
    with pytest.raises(ValueError):
        nft_branch_losses(v, v, v, torch.zeros(2, 4), t, 0.1)
    with pytest.raises(ValueError):
        nft_branch_losses(v, v, v, v, torch.zeros(3), 0.1)
    with pytest.raises(ValueError):
        nft_branch_losses(v, v, v, v, t, 0.0)
    assert math.isfinite(nft_loss(v, v, v, v, t, torch.zeros(2), 0.1).sum().item())
