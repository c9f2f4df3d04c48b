"""The MARBLE balancer's refresh (ALGORITHM.md 2.2-2.4) on given per-reward gradients, against
references written here: scipy's SLSQP for the simplex QP, the EMA recursions by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from marble.balancers.args import MarbleArgs
from marble.balancers.marble import Marble
from marble.errors import ConfigError

torch.set_num_threads(1)
NAMES = ["a", "b", "c"]


def _min_norm_reference(m: np.ndarray) -> np.ndarray:
    """argmin a^T M a over the simplex, by SLSQP from several starts (independent of marble.qp)."""
    k = m.shape[0]
    best = None
    for start in [np.full(k, 1.0 / k)] + [np.eye(k)[i] * 0.9 + 0.1 / k for i in range(k)]:
        r = minimize(lambda a: a @ m @ a, start, jac=lambda a: 2 * m @ a, method="SLSQP",
                     bounds=[(0, 1)] * k, constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1}],
                     options={"ftol": 1e-15, "maxiter": 500})
        if best is None or r.fun < best.fun:
            best = r
    return best.x


def _unit_gram(g: np.ndarray) -> np.ndarray:
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    return u @ u.T


def _grads(seed: int, d: int = 40) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=d)
    g = np.stack([base + rng.normal(size=d) * s for s in (0.5, 1.5, 3.0)])
    g[2] -= 1.2 * base  # reward c conflicts with the others
    return torch.tensor(g * np.array([[1.0], [0.1], [10.0]]))  # very different scales


def _balancer(**kw) -> Marble:
    b = Marble(MarbleArgs(**kw))
    b.setup(NAMES, [1.0, 1.0, 1.0])
    return b


def test_alpha_ema_direction_and_amortized_weights():
    b = _balancer(rho=0.7)
    abar = np.full(3, 1 / 3)
    for seed in range(3):
        g = _grads(seed)
        direction, diag = b.combine(g, step=seed)
        gn = g.numpy()
        a_ref = _min_norm_reference(_unit_gram(gn))
        alpha = np.array([diag[f"alpha/{n}"] for n in NAMES])
        np.testing.assert_allclose(alpha, a_ref, atol=2e-4)
        norms = np.linalg.norm(gn, axis=1)
        u = gn / norms[:, None]
        # Eq. 7: the refresh applies the fresh alpha*, scaled by the mean norm
        np.testing.assert_allclose(direction.numpy(), (alpha @ u) * norms.mean(), rtol=1e-9, atol=1e-12)
        abar = 0.7 * abar + 0.3 * alpha  # Eq. 12
        np.testing.assert_allclose(b.alpha_bar, abar, rtol=1e-12)
        # Proposition 1: the amortized weights reproduce s * sum abar_k u_k from the raw gradients
        w = np.array(b.mix_weights(step=seed + 1))
        np.testing.assert_allclose(w @ gn, (abar @ u) * norms.mean(), rtol=1e-9, atol=1e-12)
    # min-norm direction: no reward is hurt to first order (cos(g_k, d) equal where alpha_k > 0)
    cos = [diag[f"cos/marble/{n}"] for n in NAMES]
    assert min(cos) > 0


def test_gram_ema_solves_the_qp_on_the_averaged_gram_and_resumes():
    b = _balancer(rho=0.6, ema="gram")
    m_bar = None
    grads = [_grads(s) for s in range(4)]
    for i, g in enumerate(grads[:3]):
        direction, diag = b.combine(g, step=i)
        m = _unit_gram(g.numpy())
        m_bar = m if m_bar is None else 0.6 * m_bar + 0.4 * m
        a_ref = _min_norm_reference(m_bar)
        alpha = np.array([diag[f"alpha/{n}"] for n in NAMES])
        np.testing.assert_allclose(alpha, a_ref, atol=2e-4)
        np.testing.assert_allclose(b.alpha_bar, alpha, rtol=0, atol=0)  # no second EMA on top
        gn = g.numpy()
        norms = np.linalg.norm(gn, axis=1)
        np.testing.assert_allclose(direction.numpy(), (alpha @ (gn / norms[:, None])) * norms.mean(), rtol=1e-9)
    # the averaged Gram is part of the state: a resumed balancer continues identically
    b2 = _balancer(rho=0.6, ema="gram")
    b2.load_state_dict(b.state_dict())
    d1, _ = b.combine(grads[3], step=3)
    d2, _ = b2.combine(grads[3], step=3)
    assert torch.equal(d1, d2)
    # and the averaged Gram differs from the last one alone: the option is not a no-op
    assert not np.allclose(b.gram_bar, _unit_gram(grads[3].numpy()))


def test_gram_ema_keeps_an_inactive_reward_out():
    b = _balancer(ema="gram")
    g = _grads(0)
    g[1] = 0.0  # reward b had no gradient at this refresh
    _, diag = b.combine(g, step=0)
    assert diag["alpha/b"] == 0.0
    assert diag["alpha/a"] + diag["alpha/c"] == pytest.approx(1.0, abs=1e-9)
    # when b comes back, its pairs start from the fresh Gram, the others keep averaging
    g2 = _grads(1)
    b.combine(g2, step=1)
    m1, m2 = _unit_gram(_grads(0).numpy()), _unit_gram(g2.numpy())
    np.testing.assert_allclose(b.gram_bar[1], m2[1], rtol=1e-12)
    np.testing.assert_allclose(b.gram_bar[0, 2], 0.7 * m1[0, 2] + 0.3 * m2[0, 2], rtol=1e-12)
    b2 = _balancer(ema="gram")  # a state with never-seen pairs survives the JSON-able round trip
    b2.combine(g, step=0)
    b3 = _balancer(ema="gram")
    b3.load_state_dict(b2.state_dict())
    assert np.array_equal(np.isnan(b3.gram_bar), np.isnan(b2.gram_bar))


def test_bad_ema_value_names_the_key():
    with pytest.raises(ConfigError, match="balancer.args.ema"):
        Marble(MarbleArgs(ema="grams"))


def test_gradient_ema_normalizes_by_the_averaged_gradient():
    b = _balancer(rho=0.7, ema="gradient")
    grads = [_grads(s) for s in range(3)]
    m = None
    for i, g in enumerate(grads):
        direction, diag = b.combine(g, step=i)
        gn = g.numpy()
        m = gn.copy() if m is None else 0.7 * m + 0.3 * gn
        m_norms = np.linalg.norm(m, axis=1)
        alpha = np.array([diag[f"alpha/{n}"] for n in NAMES])
        np.testing.assert_allclose(alpha, _min_norm_reference(_unit_gram(m)), atol=2e-4)
        s = m_norms.mean()
        # the step: this refresh's gradients over the averaged norms, scaled by their mean
        np.testing.assert_allclose(direction.numpy(), s * (alpha / m_norms) @ gn, rtol=1e-5, atol=1e-9)
        # amortized weights reproduce the same step from the raw per-reward gradients (Proposition 1)
        w = np.array(b.mix_weights(step=i + 1))
        np.testing.assert_allclose(w @ gn, direction.numpy(), rtol=1e-5, atol=1e-9)
    b2 = _balancer(rho=0.7, ema="gradient")
    b2.load_state_dict(b.state_dict())
    g = _grads(7)
    assert torch.equal(b.combine(g, step=3)[0], b2.combine(g, step=3)[0])


@pytest.mark.parametrize("noise", [3.0, 6.0])
def test_gradient_ema_reduces_the_bias_against_a_noisy_reward(noise):
    """Reward a: a consistent gradient. Reward b: an orthogonal signal of the same size buried in
    batch noise. Dividing by the noisy ||g_b|| shrinks b's expected share of the step (the paper's
    normalization); dividing by the averaged gradient's norm shrinks it much less."""
    rng = np.random.default_rng(0)
    d = 400
    s_a, s_b = np.zeros(d), np.zeros(d)
    s_a[0], s_b[1] = 1.0, 1.0
    batches = [np.stack([s_a + 0.05 * rng.normal(size=d) / np.sqrt(d),
                         s_b + noise * rng.normal(size=d) / np.sqrt(d)]) for _ in range(300)]
    share = {}
    for ema in ("alpha", "gradient"):
        b = Marble(MarbleArgs(rho=0.7, ema=ema))
        b.setup(["a", "b"], [1.0, 1.0])
        total = np.zeros(d)
        for i, g in enumerate(batches):
            total += b.combine(torch.tensor(g), step=i)[0].numpy()
        share[ema] = total[1] / total[0]  # b's progress relative to a's, in expectation 1 if unbiased
    assert share["alpha"] < 0.5  # the bias this option addresses
    assert share["gradient"] > 1.5 * share["alpha"]


@pytest.mark.parametrize("ema", ["alpha", "gram", "gradient"])
def test_a_reward_absent_from_a_refresh_keeps_its_coefficient_and_norm(ema):
    """A reward with no valid sample in a refresh step (its gradient is exactly zero) was not
    observed: it keeps the coefficient and norm of the refresh that last saw it, the observed
    rewards share the rest of the simplex, and its amortized weight stays abar_k * s / ||g_k||."""
    b = _balancer(rho=0.7, ema=ema)
    g0 = _grads(0)
    b.combine(g0, step=0)
    abar0, norms0 = list(b.alpha_bar), list(b.norms)
    assert min(abar0) > 0
    g1 = _grads(1)
    g1[1] = 0.0  # reward b: no sample in this step
    direction, diag = b.combine(g1, step=1)
    assert diag["alpha/b"] == 0.0
    assert diag["alpha/a"] + diag["alpha/c"] == pytest.approx(1.0, abs=1e-9)
    if ema == "alpha":  # the QP ran on a and c only, and the refresh step follows them (Eq. 7)
        gn = g1.numpy()[[0, 2]]
        a_ref = _min_norm_reference(_unit_gram(gn))
        np.testing.assert_allclose([diag["alpha/a"], diag["alpha/c"]], a_ref, atol=2e-4)
        nrm = np.linalg.norm(gn, axis=1)
        a = np.array([diag["alpha/a"], diag["alpha/c"]])
        np.testing.assert_allclose(direction.numpy(), (a @ (gn / nrm[:, None])) * nrm.mean(), rtol=1e-9, atol=1e-12)
    # b keeps its coefficient and its cached norm; the simplex still sums to one
    assert b.alpha_bar[1] == abar0[1]
    assert b.norms[1] == norms0[1]
    assert sum(b.alpha_bar) == pytest.approx(1.0, abs=1e-12)
    mass = 1 - abar0[1]
    fresh = np.array([diag["alpha/a"], diag["alpha/c"]]) * mass
    expect = fresh if ema != "alpha" else 0.7 * np.array([abar0[0], abar0[2]]) + 0.3 * fresh
    np.testing.assert_allclose([b.alpha_bar[0], b.alpha_bar[2]], expect, rtol=1e-12)
    w = b.mix_weights(step=2)
    assert w[1] == pytest.approx(b.alpha_bar[1] * b.mean_norm / norms0[1], rel=1e-12)
    assert b.mean_norm == pytest.approx(np.mean(b.norms), rel=1e-12)


def test_a_refresh_without_any_gradient_changes_nothing():
    b = _balancer(rho=0.7)
    b.combine(_grads(0), step=0)
    before = (list(b.alpha_bar), list(b.norms), b.mean_norm)
    direction, _ = b.combine(torch.zeros(3, 40, dtype=torch.float64), step=1)
    assert float(direction.abs().max()) == 0.0
    assert (list(b.alpha_bar), list(b.norms), b.mean_norm) == before
