"""ALGORITHM.md 2.3 (Proposition 1): one amortized backward equals sum_k w_k g_k.

On sd3-tiny in float64: the trainer's single mixed backward vs K per-reward backward passes
(trainer code) vs an independent per-reward reference written here - including a batch with
|A_k| > A_max (clipped r) and a reward masked out on half the samples.
"""

from __future__ import annotations

import pytest
import torch

from marble import RewardOutput, RewardSpec, hookimpl
from marble.config import load_config
from marble.nft import optimality_probability
from marble.testing import marble_plugin  # noqa: F401
from marble.trainer import TrainBatch, Trainer

torch.set_num_threads(1)


class Const:
    def score(self, images, prompts, metadata):
        return RewardOutput(torch.zeros(images.shape[0]))


class Plugin:
    @hookimpl
    def marble_register_rewards(self):
        return [RewardSpec(n, lambda **_: Const(), description="test") for n in ("ra", "rb", "rc")]


@pytest.fixture(scope="module")
def sd3_medium_tiny(tmp_path_factory):
    """A tiny SD3-*medium*-architecture folder (no q/k RMSNorm). diffusers' RMSNorm computes its
    variance in float32 even for float64 inputs, which caps any float64 identity at ~1e-8; the
    SD3-medium layout has no such op, so the identity can be checked at float64 precision."""
    import json

    from marble_diffusers.tiny import build_tiny_sd3

    path = build_tiny_sd3(tmp_path_factory.mktemp("sd3m") / "pipe", seed=0)
    cfg_path = path / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["qk_norm"] = None
    cfg_path.write_text(json.dumps(cfg))
    return str(path)


def make_trainer(tmp_path, folder, kl_coef=0.0, micro_batch=3):
    cfg = load_config(None, data={
        "output_dir": str(tmp_path / "run"),
        "backbone": {"name": "sd3", "args": {"model": folder, "dtype": "fp64", "resolution": 32,
                                             "lora_rank": 4, "lora_alpha": 8, "max_sequence_length": 16}},
        "rewards": [{"name": "ra"}, {"name": "rb"}, {"name": "rc"}],
        "balancer": {"name": "marble"},
        "prompts": [{"texts": ["a red square", "a blue circle"]}],
        "train": {"micro_batch": micro_batch, "kl_coef": kl_coef, "beta": 0.1, "num_steps": 4,
                  "tensorboard": False, "progress": False},
    })
    return Trainer(cfg)


def make_batch(trainer, n=5, T=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    bb = trainer.backbone
    cond = bb.encode_prompts(["a red square", "a blue circle", "a cat", "a sign", "a dog"][:n])
    ro = bb.sample(cond, num_steps=4, generator=g, adapter="old")
    # Advantages beyond +-A_max on purpose (r clipped to 0 or 1), and reward rb masked on half.
    adv = torch.randn(n, 3, generator=g, dtype=torch.float64) * 4
    adv[0, 0], adv[1, 1], adv[2, 2] = 9.0, -12.0, 6.5
    r = optimality_probability(adv, 5.0)
    valid = torch.ones(n, 3, dtype=torch.bool)
    valid[::2, 1] = False
    t_index = torch.stack([torch.randperm(4, generator=g)[:T] for _ in range(n)])
    return TrainBatch(ro.latents.detach(), cond, r, valid, t_index, ro.timesteps, noise_seed=123)


def reference_grads(trainer, batch):
    """Independent per-reward gradients: loss_k = mean over valid samples and timesteps of
    (A_max/beta)(r L+ + (1-r) L-), written out here sample by sample (no micro-batching)."""
    t = trainer.cfg.train
    bb, params = trainer.backbone, trainer.params
    N, K = batch.r.shape
    T = batch.t_index.shape[1]
    # Replay the trainer's noise order: per timestep j, per micro-batch, one randn draw.
    gen = torch.Generator().manual_seed(batch.noise_seed)
    eps = torch.zeros(T, *batch.latents.shape, dtype=batch.latents.dtype)
    for j in range(T):
        for lo in range(0, N, t.micro_batch):
            shape = batch.latents[lo:lo + t.micro_batch].shape
            eps[j, lo:lo + t.micro_batch] = torch.randn(shape, generator=gen, dtype=torch.float32).double()
    grads = []
    for k in range(K):
        total = 0.0
        n_k = int(batch.valid[:, k].sum())
        for i in range(N):
            if not batch.valid[i, k]:
                continue
            for j in range(T):
                x0 = batch.latents[i:i + 1]
                tt = batch.timesteps[batch.t_index[i, j]].view(1)
                x_t = (1 - tt) * x0 + tt * eps[j, i:i + 1]
                cond = {key: v[i:i + 1] for key, v in batch.cond.items()}
                with torch.no_grad():
                    v_old = bb.velocity(x_t, tt, cond, adapter="old")
                v = bb.velocity(x_t, tt, cond, adapter="trained")
                pos = x_t - tt * ((1 - t.beta) * v_old + t.beta * v)
                neg = x_t - tt * ((1 + t.beta) * v_old - t.beta * v)
                wp = (pos - x0).abs().mean().detach()
                wn = (neg - x0).abs().mean().detach()
                lp = ((pos - x0) ** 2).mean() / wp
                ln = ((neg - x0) ** 2).mean() / wn
                r = batch.r[i, k]
                total = total + (t.a_max / t.beta) * (r * lp + (1 - r) * ln) / (n_k * T)
        g = torch.autograd.grad(total, params)
        grads.append(torch.cat([x.reshape(-1) for x in g]))
    return torch.stack(grads)


@pytest.fixture
def plugin(marble_plugin):
    marble_plugin(Plugin(), name="consts")


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_amortized_equals_weighted_sum_of_per_reward_grads(plugin, tmp_path, sd3_medium_tiny):
    trainer = make_trainer(tmp_path, sd3_medium_tiny)
    # Move the trained adapter away from the old one so the loss has a gradient signal.
    with torch.no_grad():
        for p in trainer.params:
            p.add_(0.05 * torch.randn_like(p))
    batch = make_batch(trainer)
    per_reward, kl_none, _ = trainer.gradients(batch, None)
    assert kl_none is None
    ref = reference_grads(trainer, batch)
    assert rel(per_reward, ref) < 1e-10, "per-reward gradients differ from the independent reference"
    w = [0.7, 2.3, 0.15]
    mixed, _, _ = trainer.gradients(batch, w)
    expected = sum(wk * g for wk, g in zip(w, ref))
    err = rel(mixed, expected)
    assert err < 1e-10, f"amortization identity broken: relative error {err:.3e}"
    # the identity is not vacuous: the rewards' gradients really differ
    assert rel(ref[0], ref[1]) > 1e-3 and rel(ref[1], ref[2]) > 1e-3


def test_marble_weights_reproduce_normalized_direction(plugin, tmp_path, sd3_medium_tiny):
    """Refresh on per-reward grads, then the amortized weights w_k = abar_k s/||g_k|| make one
    backward equal to s * sum_k abar_k u_k (the direction the QP was solved for)."""
    trainer = make_trainer(tmp_path, sd3_medium_tiny)
    with torch.no_grad():
        for p in trainer.params:
            p.add_(0.05 * torch.randn_like(p))
    batch = make_batch(trainer, seed=1)
    grads, _, _ = trainer.gradients(batch, None)
    bal = trainer.balancer
    direction, diag = bal.combine(grads, step=0)
    norms = grads.norm(dim=1)
    s = norms.mean()
    u = grads / norms[:, None]
    alpha = torch.tensor([diag[f"alpha/{n}"] for n in bal.names], dtype=torch.float64)
    assert torch.allclose(direction, s * (alpha @ u), rtol=1e-10, atol=0)
    mixed, _, _ = trainer.gradients(batch, bal.mix_weights(step=1))
    abar = torch.tensor(bal.alpha_bar, dtype=torch.float64)
    assert rel(mixed, s * (abar @ u)) < 1e-10


def test_kl_term_outside_balancing(plugin, tmp_path, sd3_medium_tiny):
    trainer = make_trainer(tmp_path, sd3_medium_tiny, kl_coef=0.3, micro_batch=2)
    with torch.no_grad():
        for p in trainer.params:
            p.add_(0.05 * torch.randn_like(p))
    batch = make_batch(trainer, seed=2)
    per_reward, kl_grad, _ = trainer.gradients(batch, None)
    assert kl_grad is not None and kl_grad.norm() > 0
    w = [0.2, 0.5, 0.3]
    mixed, _, _ = trainer.gradients(batch, w)
    expected = sum(wk * g for wk, g in zip(w, per_reward)) + kl_grad
    assert rel(mixed, expected) < 1e-10


def _identical_group(trainer, n=4, T=2):
    g = torch.Generator().manual_seed(0)
    bb = trainer.backbone
    cond = bb.encode_prompts(["a red square"])
    ro = bb.sample(cond, num_steps=4, generator=g, adapter="old")
    latents = ro.latents.detach().repeat(n, *([1] * (ro.latents.dim() - 1)))
    cond = {k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in cond.items()}
    adv = torch.randn(n, 3, generator=g, dtype=torch.float64)
    adv = (adv - adv.mean(0)) / adv.std(0)  # a group's advantages: mean zero, |A| < A_max
    r = optimality_probability(adv, 5.0)
    valid = torch.ones(n, 3, dtype=torch.bool)
    shared = torch.randperm(4, generator=g)[:T]
    return latents, cond, r, valid, shared, ro.timesteps


def test_shared_draw_cancels_an_identical_group_exactly(plugin, tmp_path, sd3_medium_tiny):
    """train.loss_noise=group (common random numbers): a group's advantages sum to zero, so with
    one shared (t, eps) draw the part of each sample's gradient that depends on (t, eps) alone
    cancels. A group of identical images carries no preference, and at the start of training
    (trained adapter = old adapter) its gradient is exactly zero with a shared draw - but not
    with per-sample draws, where only the noise is left."""
    trainer = make_trainer(tmp_path, sd3_medium_tiny, micro_batch=3)  # the group spans micro-batches
    latents, cond, r, valid, shared, ts = _identical_group(trainer)
    n = latents.shape[0]
    group = TrainBatch(latents, cond, r, valid, shared.repeat(n, 1), ts, noise_seed=7,
                       sample_ids=torch.zeros(n, dtype=torch.long))
    per_sample = TrainBatch(latents, cond, r, valid, torch.stack([torch.randperm(4, generator=torch.Generator().manual_seed(i))[:2] for i in range(n)]), ts,
                            noise_seed=7, sample_ids=torch.arange(n))
    g_group, _, _ = trainer.gradients(group, None)
    g_sample, _, _ = trainer.gradients(per_sample, None)
    for k in range(3):
        assert float(g_sample[k].norm()) > 1e-6  # per-sample draws: pure (t, eps) noise remains
        assert float(g_group[k].norm()) <= 1e-10 * float(g_sample[k].norm())
