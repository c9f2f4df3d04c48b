"""The GPU fast path, checked on the CPU: regional compilation of the transformer blocks and the
switchable LoRA give the same losses and gradients as the eager peft path through the trainer's
own ``Trainer.gradients``, and switching adapters after warm-up never recompiles.

The inductor test compiles sd3-tiny (2 layers) for real (C++ code generation on the CPU); the
recompile test uses the "aot_eager" backend (the same graph capture, guards and AOTAutograd,
without code generation) on a 4-layer tiny transformer whose block kinds repeat.
"""

from __future__ import annotations

import pytest
import torch

from marble import RewardOutput, RewardSpec, hookimpl
from marble.config import load_config
from marble.errors import BackboneError
from marble.testing import register_plugin
from marble.trainer import TrainBatch, Trainer
from marble_diffusers import fast


class _Mean:
    def __init__(self, c):
        self.c = c

    def score(self, images, prompts, metadata):
        return RewardOutput(images.float()[:, self.c].mean(dim=(1, 2)))


class _Rewards:
    @hookimpl
    def marble_register_rewards(self):
        return [RewardSpec("fp_red", lambda: _Mean(0), description="test"),
                RewardSpec("fp_blue", lambda: _Mean(2), description="test")]


def _trainer(backbone, backbone_name, kl_coef=1e-4):
    data = {"output_dir": "unused", "backbone": {"name": backbone_name},
            "rewards": [{"name": "fp_red"}, {"name": "fp_blue", "weight": 0.5}],
            "balancer": {"name": "marble"}, "prompts": [{"texts": ["a red apple", "a blue sky"]}],
            "train": {"beta": 0.1, "kl_coef": kl_coef, "micro_batch": 2, "progress": False, "tensorboard": False}}
    with register_plugin(_Rewards(), name="fast-path-test"):
        cfg = load_config(None, data=data)
        return Trainer(cfg, backbone=backbone, rewards=[_Mean(0), _Mean(2)], eval_rewards=[])


def _same_weights(dst, src, seed=3):
    """Copy src's adapters into dst, then give both the same non-trivial trained and old weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for which in ("trained", "old"):
            dst.load_adapter_state(which, src.adapter_state(which))
        for a, b in zip(src.trainable_parameters(), dst.trainable_parameters()):
            d = 0.05 * torch.randn(a.shape, generator=g, dtype=torch.float64).to(a.dtype)
            a.add_(d)
            b.add_(d)
        src.soft_update_old(0.5)  # old != trained
        dst.soft_update_old(0.5)


def _batch(backbone, n=4, T=2, K=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    cond = backbone.encode_prompts(["a red apple", "a blue sky", "a red car", "a blue boat"][:n])
    ro = backbone.sample(cond, num_steps=3, generator=torch.Generator().manual_seed(seed), adapter="old")
    r = torch.rand(n, K, generator=g, dtype=torch.float64)
    valid = torch.ones(n, K, dtype=torch.bool)
    valid[0, 1] = False  # one masked-out sample
    t_index = torch.stack([torch.randperm(3, generator=g)[:T] for _ in range(n)])
    return TrainBatch(ro.latents, cond, r, valid, t_index, ro.timesteps, noise_seed=seed + 1)


def test_compile_arg():
    cpu = torch.device("cpu")
    assert fast.resolve_compile("auto", cpu) is False
    assert fast.resolve_compile("auto", torch.device("cuda")) is True
    assert fast.resolve_compile("True", cpu) is True and fast.resolve_compile(False, cpu) is False
    with pytest.raises(ValueError, match="auto, true, false"):
        fast.resolve_compile("sometimes", cpu)


def test_bad_compile_value_is_a_clear_backbone_error(tiny_cache):
    from marble_diffusers.random_sd3 import RandomSD3Args, RandomSD3Backbone

    with pytest.raises(BackboneError, match="compile must be one of"):
        RandomSD3Backbone(RandomSD3Args(size="tiny", resolution=32, lora_rank=2, compile="maybe"))


@pytest.fixture(scope="module")
def inductor_pair(tiny_cache, tmp_path_factory):
    """sd3-tiny eager (peft forward) and compiled with inductor (switchable LoRA), same weights.

    A private inductor cache: a backward graph cached by another process that compiled it with
    buffer donation (PyTorch's default) would be served again and break ``retain_graph``."""
    import os

    import torch._inductor.config as inductor_config

    from marble_diffusers import SD3Backbone, SD3TinyArgs

    old_threads, old_dir = inductor_config.compile_threads, os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("inductor"))
    inductor_config.compile_threads = 1  # no worker pool: faster on a small shared CPU
    eager = SD3Backbone(SD3TinyArgs(resolution=32, compile="false"))
    compiled = SD3Backbone(SD3TinyArgs(resolution=32, compile="true"))
    _same_weights(compiled, eager)
    yield eager, compiled
    inductor_config.compile_threads = old_threads
    if old_dir is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = old_dir


def test_compiled_matches_eager_through_trainer_gradients(inductor_pair):
    eager, compiled = inductor_pair
    assert compiled.compiled and compiled.compiled_blocks == 2 and not eager.compiled
    te, tc = _trainer(eager, "sd3-tiny"), _trainer(compiled, "sd3-tiny")
    batch = _batch(eager)
    w = [1.0, 0.5]
    # amortized step: one backward of the mix (Proposition 1), old + reference + trained forwards
    ge, kle, le = te.gradients(batch, w)
    gc, klc, lc = tc.gradients(batch, w)
    assert torch.allclose(lc["loss"], le["loss"], rtol=1e-4, atol=1e-7)
    assert lc["kl"] == pytest.approx(le["kl"], rel=1e-4, abs=1e-10)
    assert torch.allclose(gc, ge, rtol=1e-4, atol=1e-6 * float(ge.abs().max())), float((gc - ge).abs().max())
    # refresh step: K per-reward backward passes through the same graph (retain_graph) + the KL one
    Ge, kle, _ = te.gradients(batch, None)
    Gc, klc, _ = tc.gradients(batch, None)
    assert Gc.shape == Ge.shape == (2, ge.numel())
    assert torch.allclose(Gc, Ge, rtol=1e-4, atol=1e-6 * float(Ge.abs().max()))
    assert torch.allclose(klc, kle, rtol=1e-4, atol=1e-6 * float(kle.abs().max()))
    # the rollout (old adapter, no grad) agrees too
    cond = eager.encode_prompts(["a red apple", "a blue sky"])
    re = eager.sample(cond, num_steps=3, generator=torch.Generator().manual_seed(5))
    rc = compiled.sample(cond, num_steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(rc.latents, re.latents, rtol=1e-4, atol=1e-5)
    assert torch.equal(rc.timesteps, re.timesteps)
    # warmed up: switching adapters (sampling, training forwards, reference) compiles nothing more
    before = fast.compile_counters()
    tc.gradients(batch, w)
    compiled.sample(cond, num_steps=2, generator=torch.Generator().manual_seed(6), adapter="old")
    with torch.no_grad():
        for a in ("reference", "trained", "old", "reference"):
            compiled.velocity(batch.latents[:2], batch.timesteps[:2], {k: v[:2] for k, v in batch.cond.items()}, a)
    after = fast.compile_counters()
    assert after == before
    assert after["graph_breaks"] == 0


@pytest.fixture(scope="module")
def aot_pair(tiny_cache):
    """A 4-layer tiny random SD3 (blocks: dual, dual, plain, last) eager and compiled (aot_eager)."""
    from marble_diffusers.random_sd3 import RandomSD3Args, RandomSD3Backbone

    fast.COMPILE_OPTIONS["backend"] = "aot_eager"
    try:
        kw = dict(size="tiny", resolution=32, lora_rank=2, lora_alpha=4.0)
        eager = RandomSD3Backbone(RandomSD3Args(**kw, compile="false"))
        compiled = RandomSD3Backbone(RandomSD3Args(**kw, compile="true"))
    finally:
        del fast.COMPILE_OPTIONS["backend"]
    _same_weights(compiled, eager)
    return eager, compiled


def test_adapter_switches_never_recompile(aot_pair):
    eager, compiled = aot_pair
    assert compiled.compiled_blocks == 4
    cond = eager.encode_prompts(["one", "two"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 4, 4, generator=g)
    t = torch.tensor([0.3, 0.8])

    def velocities(bb):
        with torch.no_grad():
            out = {a: bb.velocity(x, t, cond, a) for a in ("old", "reference")}
        v = bb.velocity(x, t, cond, "trained")
        v.square().mean().backward()
        out["trained"] = v.detach()
        out["grads"] = [p.grad.clone() for p in bb.trainable_parameters()]
        for p in bb.trainable_parameters():
            p.grad = None
        return out

    start = fast.compile_counters()
    ref = velocities(eager)
    got = velocities(compiled)  # warm-up: every graph this loop needs
    warm = fast.compile_counters()
    # blocks of one kind share compiled code: 3 kinds (dual attention, plain, last) without grad;
    # with grad a 4th: the first block, whose input does not require grad
    assert warm["frames"] - start["frames"] == 7
    for a in ("old", "reference", "trained"):
        assert torch.allclose(got[a], ref[a], rtol=1e-5, atol=1e-6), a
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(got["grads"], ref["grads"]))
    # the reference is exactly the base model (zero gate), not the old adapter
    assert not torch.allclose(got["old"], got["reference"])
    for order in (("reference", "old", "trained"), ("trained", "reference", "old"), ("old", "old", "reference")):
        for a in order:
            with torch.set_grad_enabled(a == "trained"):
                compiled.velocity(x, t, cond, a)
        compiled.sample(cond, num_steps=2, generator=torch.Generator().manual_seed(1), adapter="old")
        velocities(compiled)
        with torch.no_grad():  # the trained adapter without grad (evaluation) reuses the no-grad graph
            assert torch.allclose(compiled.velocity(x, t, cond, "trained"), ref["trained"], rtol=1e-5, atol=1e-6)
    end = fast.compile_counters()
    assert end["frames"] == warm["frames"], "an adapter switch recompiled"
    assert end["graph_breaks"] == start["graph_breaks"] == 0
    # switching never changes requires_grad, and peft's own adapter state is left alone
    assert all(p.requires_grad for p in compiled.trainable_parameters())
    assert sum(p.requires_grad for p in compiled.transformer.parameters()) == len(compiled.trainable_parameters())


def test_bf16_keeps_fp32_master_lora_weights(tiny_cache):
    """bf16 compute: the LoRA weights (and their gradients) stay fp32; the output is close to peft's."""
    from marble_diffusers.random_sd3 import RandomSD3Args, RandomSD3Backbone

    kw = dict(size="tiny", resolution=32, lora_rank=2, lora_alpha=4.0, dtype="bf16")
    fast.COMPILE_OPTIONS["backend"] = "aot_eager"
    try:
        compiled = RandomSD3Backbone(RandomSD3Args(**kw, compile="true"))
    finally:
        del fast.COMPILE_OPTIONS["backend"]
    eager = RandomSD3Backbone(RandomSD3Args(**kw, compile="false"))
    _same_weights(compiled, eager)
    assert all(p.dtype == torch.float32 for p in compiled.trainable_parameters())
    cond = eager.encode_prompts(["one", "two"])
    x = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.3, 0.8])
    vc = compiled.velocity(x, t, cond, "trained")
    ve = eager.velocity(x, t, cond, "trained")
    assert vc.dtype == torch.float32  # returned in the latents' dtype
    assert torch.allclose(vc, ve.detach(), rtol=0.05, atol=0.05 * float(ve.detach().abs().max()))
    vc.square().mean().backward()
    grads = [p.grad for p in compiled.trainable_parameters()]
    assert all(gr is not None and gr.dtype == torch.float32 for gr in grads)
    assert any(bool(gr.ne(0).any()) for gr in grads)
