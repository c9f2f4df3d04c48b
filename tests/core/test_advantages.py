"""Tests of marble.advantages (MARBLE Eq. 3, ALGORITHM.md 1.3) against hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from marble.advantages import AdvantageNormalizer

torch.set_num_threads(1)
EPS = 1e-4


def _ref(scores, groups, mask, mode, eps=EPS):
    """Explicit-loop reference of Eq. 3 in float64."""
    scores = [float(s) for s in scores]
    groups = [int(g) for g in groups]
    mask = [True] * len(scores) if mask is None else [bool(m) for m in mask]
    valid = [s for s, m in zip(scores, mask) if m]
    if not valid:
        return [0.0] * len(scores)
    mu = sum(valid) / len(valid)
    gstd = math.sqrt(sum((s - mu) ** 2 for s in valid) / len(valid))
    out = []
    for s, g, m in zip(scores, groups, mask):
        members = [x for x, gg, mm in zip(scores, groups, mask) if gg == g and mm]
        if not m or len(members) < 2:
            out.append(0.0)
            continue
        gm = sum(members) / len(members)
        if mode == "global":
            sd = gstd
        else:
            sd = math.sqrt(sum((x - gm) ** 2 for x in members) / len(members))
        out.append((s - gm) / (sd + eps))
    return out


def test_hand_computed_global_and_group():
    # Two groups: A = {1, 3}, B = {2, 4, 6}.
    scores = torch.tensor([1.0, 3.0, 2.0, 4.0, 6.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1, 1, 1])
    # global mean = 16/5 = 3.2; population var = (4.84+0.04+1.44+0.64+7.84)/5 = 2.96
    gstd = math.sqrt(2.96)
    a = AdvantageNormalizer("global")(scores, groups)
    expected = [-1 / (gstd + EPS), 1 / (gstd + EPS), -2 / (gstd + EPS), 0.0, 2 / (gstd + EPS)]
    np.testing.assert_allclose(a.numpy(), expected, rtol=1e-14, atol=1e-15)
    # group std: A std = 1; B std = sqrt(8/3)
    sb = math.sqrt(8 / 3)
    a = AdvantageNormalizer("group")(scores, groups)
    expected = [-1 / (1 + EPS), 1 / (1 + EPS), -2 / (sb + EPS), 0.0, 2 / (sb + EPS)]
    np.testing.assert_allclose(a.numpy(), expected, rtol=1e-14, atol=1e-15)


def test_mask_excludes_samples_from_mean_and_std():
    scores = torch.tensor([1.0, 100.0, 3.0, 5.0, float("nan")])
    groups = torch.tensor([7, 7, 7, 9, 9])
    mask = torch.tensor([True, False, True, True, False])
    norm = AdvantageNormalizer("global")
    a = norm(scores, groups, mask)
    # valid {1, 3 | group 7} and {5 | group 9, single}; global std over {1,3,5} = sqrt(8/3)
    s = math.sqrt(8 / 3)
    np.testing.assert_allclose(a.numpy(), [-1 / (s + EPS), 0, 1 / (s + EPS), 0, 0], rtol=1e-6)
    assert torch.isfinite(a).all()
    assert a.dtype == torch.float32
    st = norm.stats()
    assert st["valid_frac"] == pytest.approx(0.6)
    assert st["raw_mean"] == pytest.approx(3.0)
    assert st["n_valid"] == 3
    # adv std over valid samples: values (-x, x, 0), population std = x*sqrt(2/3)
    assert st["adv_std"] == pytest.approx(math.sqrt(2 / 3) / (s + EPS), rel=1e-6)


def test_single_member_and_fully_masked_groups():
    scores = torch.tensor([5.0, 1.0, 2.0, 3.0, 4.0])
    groups = torch.tensor([0, 1, 1, 2, 2])
    mask = torch.tensor([True, True, True, False, False])
    for mode in ("global", "group"):
        a = AdvantageNormalizer(mode)(scores, groups, mask)
        assert a[0] == 0.0  # single member
        assert a[3] == 0.0 and a[4] == 0.0  # fully masked group
        assert a[1] < 0 < a[2]
        np.testing.assert_allclose(a.numpy(), _ref(scores, groups, mask, mode), rtol=1e-6)


def test_all_masked_gives_zeros_no_nan():
    norm = AdvantageNormalizer("group")
    a = norm(torch.tensor([1.0, float("inf"), 3.0]), torch.tensor([0, 0, 1]), torch.zeros(3, dtype=torch.bool))
    assert a.tolist() == [0.0, 0.0, 0.0]
    st = norm.stats()
    assert st["valid_frac"] == 0.0 and all(math.isfinite(v) for v in st.values())
    assert norm.count == 0


def test_constant_scores_zero_advantage():
    for mode in ("global", "group"):
        a = AdvantageNormalizer(mode)(torch.full((6,), 0.7), torch.tensor([0, 0, 0, 1, 1, 1]))
        assert torch.all(a == 0)


def test_group_std_amplifies_small_within_group_spread():
    # With group std, each group with >= 2 distinct values gets unit-ish population std.
    g = torch.Generator().manual_seed(0)
    scores = torch.cat([torch.randn(8, generator=g) * 0.01, torch.randn(8, generator=g) * 10 + 5])
    groups = torch.tensor([3] * 8 + [11] * 8)
    a = AdvantageNormalizer("group")(scores.double(), groups)
    for sl in (slice(0, 8), slice(8, 16)):
        assert a[sl].mean().item() == pytest.approx(0.0, abs=1e-12)
        assert a[sl].std(unbiased=False).item() == pytest.approx(1.0, rel=2e-2)


@pytest.mark.parametrize("mode", ["global", "group"])
def test_random_vs_loop_reference(mode):
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(1, 40))
        scores = rng.normal(size=n) * rng.uniform(0.1, 10)
        groups = rng.choice([-3, 0, 5, 1000], size=n)  # non-contiguous ids
        mask = rng.random(n) < 0.7
        a = AdvantageNormalizer(mode)(
            torch.tensor(scores), torch.tensor(groups), torch.tensor(mask)
        )
        np.testing.assert_allclose(a.numpy(), _ref(scores, groups, mask, mode), rtol=1e-12, atol=1e-12)


def test_running_stats_vs_numpy_and_state_round_trip():
    rng = np.random.default_rng(2)
    norm = AdvantageNormalizer()
    seen = []
    for b in range(7):
        n = int(rng.integers(3, 30))
        s = rng.normal(loc=1e3, scale=0.5, size=n)  # large offset: tests the stable merge
        m = rng.random(n) < 0.8
        norm(torch.tensor(s), torch.tensor(rng.integers(0, 3, size=n)), torch.tensor(m))
        seen.append(s[m])
        if b == 3:
            # round trip through JSON mid-stream
            state = json.loads(json.dumps(norm.state_dict()))
            fresh = AdvantageNormalizer()
            fresh.load_state_dict(state)
            assert fresh.count == norm.count
            assert fresh.running_mean == norm.running_mean
            assert fresh.running_std == norm.running_std
    allv = np.concatenate(seen)
    assert norm.count == allv.size
    assert norm.running_mean == pytest.approx(allv.mean(), rel=1e-13)
    assert norm.running_std == pytest.approx(allv.std(), rel=1e-9)
    st = norm.state_dict()
    assert set(st) == {"count", "mean", "m2"}
    assert all(type(v) in (int, float) for v in st.values())


def test_advantages_dtype_and_invalid_args():
    norm = AdvantageNormalizer()
    a = norm(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 0, 1, 1]))  # integer scores
    assert a.dtype == torch.float32
    with pytest.raises(ValueError, match="global"):
        AdvantageNormalizer("per-prompt")
    with pytest.raises(ValueError):
        norm(torch.ones(3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        norm(torch.tensor([1.0, float("nan")]), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError):
        norm.load_state_dict({"count": 1})
