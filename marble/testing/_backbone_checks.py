"""Conformance checks for backbone plugins: ``check_backbone(backbone)``.

Call it from a plugin's own test suite on a small instance of the backbone (its tiny variant)::

    from marble.testing import check_backbone
    check_backbone(MyBackbone(MyArgs(model="tiny")))

Each failed property raises ``AssertionError`` naming the property, what was expected and what
came back. The backbone's adapter states are restored afterwards.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

DEFAULT_PROMPTS = ("a red cube on a table", "two cats, one orange", "a sign that says 'OPEN'")


def _fail(name: str, message: str) -> AssertionError:
    return AssertionError(f"check_backbone [{name}]: {message}")


def _tol(dtype) -> tuple[float, float]:
    """(rtol, atol) for comparing two computations that should agree to rounding."""
    import torch

    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return 8 * eps, 8 * eps


def check_backbone(
    backbone: Any,
    *,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    num_steps: int = 3,
    seed: int = 0,
    samplers: Sequence[str] = ("euler", "dpm2"),
) -> None:
    """Check that ``backbone`` keeps the marble.backbone.Backbone contract.

    Properties: cond is a dict of batch-first tensors; ``sample`` returns a Rollout with latents
    the velocity accepts, descending timesteps in (0, 1], N x 3 x H x W images in [0, 1], and is
    deterministic for a fixed generator (and differs for another seed); ``velocity`` has the
    latents' shape for all three adapters; gradients reach every trainable parameter through
    "trained" only, and switching adapters never changes requires_grad; ``soft_update_old``
    mixes exactly (eta=0 copies, eta=1 keeps, 0.3 mixes); ``adapter_state`` round-trips exactly
    and returns copies; ``save_lora`` writes non-empty files.
    """
    import torch

    from marble.backbone import Backbone, Rollout

    if not isinstance(backbone, Backbone):
        raise _fail("type", f"{type(backbone).__name__} does not subclass marble.backbone.Backbone")
    for attr in ("device", "dtype"):
        if not hasattr(backbone, attr):
            raise _fail("attributes", f"backbone has no '{attr}' attribute")
    prompts = list(prompts)
    n = len(prompts)

    saved = {w: backbone.adapter_state(w) for w in ("trained", "old")}
    try:
        _check_all(backbone, prompts, n, num_steps, seed, samplers, torch, Rollout)
    finally:
        for w, state in saved.items():
            backbone.load_adapter_state(w, state)
        for p in backbone.trainable_parameters():
            p.grad = None


def _check_all(bb, prompts, n, num_steps, seed, samplers, torch, Rollout) -> None:
    # --- encode_prompts: dict of batch-first tensors ------------------------------------
    cond = bb.encode_prompts(prompts)
    if not isinstance(cond, dict) or not cond:
        raise _fail("encode_prompts", f"expected a non-empty dict of tensors, got {type(cond).__name__}")
    for k, v in cond.items():
        if not torch.is_tensor(v) or v.ndim == 0 or v.shape[0] != n:
            shape = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
            raise _fail("encode_prompts", f"cond[{k!r}] must be a tensor with batch dim {n} first, got {shape}")
        if v.requires_grad:
            raise _fail("encode_prompts", f"cond[{k!r}] requires grad; prompt encoding must be no-grad")
    one = bb.encode_prompts(prompts[1:2])
    for k, v in cond.items():
        rtol, atol = (1e-2, 1e-2) if v.dtype in (torch.float16, torch.bfloat16) else (1e-4, 1e-5)
        if not torch.allclose(one[k].float(), v[1:2].float(), rtol=rtol, atol=atol):
            raise _fail("encode_prompts", f"cond[{k!r}] row 1 differs when prompt 1 is encoded alone: rows must be per-prompt")

    # --- sample: Rollout fields, ranges, determinism --------------------------------------
    def run(s, sampler="euler", adapter="old"):
        g = torch.Generator().manual_seed(s)
        return bb.sample(cond, num_steps=num_steps, generator=g, adapter=adapter, sampler=sampler)

    for sampler in samplers:
        r = run(seed, sampler)
        if not isinstance(r, Rollout):
            raise _fail("sample", f"sample must return marble.backbone.Rollout, got {type(r).__name__}")
        if not torch.is_tensor(r.latents) or r.latents.shape[0] != n:
            raise _fail("sample", f"latents must be a tensor with batch dim {n}, got {getattr(r.latents, 'shape', r.latents)}")
        ts = r.timesteps
        if not torch.is_tensor(ts) or ts.ndim != 1 or len(ts) != num_steps or not ts.is_floating_point():
            raise _fail("sample", f"timesteps must be a 1-D float tensor of length num_steps={num_steps}, got {ts!r}")
        if not (bool((ts > 0).all()) and bool((ts <= 1).all()) and bool((ts[1:] < ts[:-1]).all())):
            raise _fail("sample", f"timesteps must be strictly descending in (0, 1], got {ts.tolist()}")
        im = r.images
        if not torch.is_tensor(im) or im.ndim != 4 or im.shape[0] != n or im.shape[1] != 3:
            raise _fail("sample", f"images must be N x 3 x H x W with N={n}, got {getattr(im, 'shape', im)}")
        if not im.is_floating_point() or not bool(torch.isfinite(im).all()) or im.min() < 0 or im.max() > 1:
            raise _fail("sample", f"images must be finite floats in [0, 1], got range [{im.min().item()}, {im.max().item()}]")
        if not bool(torch.isfinite(r.latents).all()):
            raise _fail("sample", f"sampler {sampler!r} produced non-finite latents")
        r2 = run(seed, sampler)
        if not (torch.equal(r.latents, r2.latents) and torch.equal(r.images, r2.images)):
            raise _fail("determinism", f"two samples ({sampler!r}) with the same generator seed differ")
        if torch.equal(run(seed + 1, sampler).latents, r.latents):
            raise _fail("determinism", f"samples ({sampler!r}) with different seeds are identical: the generator is ignored")
    x0 = r.latents

    # --- velocity: shapes for the three adapters -----------------------------------------
    g = torch.Generator().manual_seed(seed + 7)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float32).to(x0.device, x0.dtype)
    t = torch.linspace(0.2, 0.9, n, dtype=x0.dtype, device=x0.device)
    tb = t.view(-1, *([1] * (x0.ndim - 1)))
    x_t = (1 - tb) * x0 + tb * eps
    with torch.no_grad():
        for adapter in ("trained", "old", "reference"):
            v = bb.velocity(x_t, t, cond, adapter)
            if tuple(v.shape) != tuple(x_t.shape):
                raise _fail("velocity", f"velocity(adapter={adapter!r}) has shape {tuple(v.shape)}, expected {tuple(x_t.shape)}")
            if not bool(torch.isfinite(v).all()):
                raise _fail("velocity", f"velocity(adapter={adapter!r}) is not finite")

    # --- make trained != old (a deterministic perturbation of every trainable tensor) ------
    params = bb.trainable_parameters()
    if not params:
        raise _fail("trainable_parameters", "returned no parameters")
    if [id(p) for p in bb.trainable_parameters()] != [id(p) for p in params]:
        raise _fail("trainable_parameters", "two calls returned different parameters or a different order")
    gen = torch.Generator().manual_seed(seed + 11)
    with torch.no_grad():
        for p in params:
            scale = float(p.detach().abs().mean()) or 1.0
            p.add_(0.5 * scale * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.device, p.dtype))

    # --- gradients reach the trained adapter only; switching adapters keeps requires_grad ---
    flags = [p.requires_grad for p in params]
    if not all(flags):
        raise _fail("trainable_parameters", "some trainable parameters do not require grad")
    for p in params:
        p.grad = None
    with torch.no_grad():
        v_old = bb.velocity(x_t, t, cond, "old")
        v_ref = bb.velocity(x_t, t, cond, "reference")
    v_old_grad_mode = bb.velocity(x_t, t, cond, "old")  # no no_grad: must still not reach theta
    if v_old_grad_mode.requires_grad:
        grads = torch.autograd.grad(v_old_grad_mode.float().sum(), params, allow_unused=True)
        if any(gr is not None and bool(gr.ne(0).any()) for gr in grads):
            raise _fail("grad isolation", "velocity(adapter='old') back-propagates into the trained parameters")
    if [p.requires_grad for p in params] != flags:
        raise _fail("grad isolation", "calling velocity with 'old'/'reference' changed requires_grad of trainable parameters")
    v_tr = bb.velocity(x_t, t, cond, "trained")
    if not v_tr.requires_grad:
        raise _fail("grad isolation", "velocity(adapter='trained') after 'old'/'reference' calls carries no grad")
    v_tr.float().square().mean().backward()
    none = [i for i, p in enumerate(params) if p.grad is None]
    if none:
        raise _fail("grad isolation", f"{len(none)} of {len(params)} trainable parameters got no grad through 'trained'")
    if not any(bool(p.grad.ne(0).any()) for p in params):
        raise _fail("grad isolation", "all gradients through 'trained' are zero")
    for p in params:
        p.grad = None
    if torch.allclose(v_tr.detach().float(), v_old.float()):
        raise _fail("adapters", "after changing the trained weights, 'trained' and 'old' velocities are equal: adapters do not switch")
    if not torch.equal(bb.velocity(x_t, t, cond, "old").detach(), v_old):
        raise _fail("adapters", "the old adapter's velocity changed although only the trained weights changed")
    with torch.no_grad():
        if not torch.equal(bb.velocity(x_t, t, cond, "reference"), v_ref):
            raise _fail("adapters", "the reference velocity changed although only the trained weights changed")

    # --- adapter_state: copies, exact round trip -----------------------------------------
    st = bb.adapter_state("trained")
    if not isinstance(st, dict) or not st:
        raise _fail("adapter_state", "adapter_state('trained') must be a non-empty dict of tensors")
    before = {k: v.clone() for k, v in st.items()}
    with torch.no_grad():
        for p in params:
            p.mul_(-1.0).add_(1.0)
    for k, v in st.items():
        if not torch.equal(v, before[k]):
            raise _fail("adapter_state", "adapter_state returned views of the live weights, not copies")
    bb.load_adapter_state("trained", st)
    back = bb.adapter_state("trained")
    if set(back) != set(st) or any(not torch.equal(back[k], st[k]) for k in st):
        raise _fail("adapter_state", "load_adapter_state(adapter_state()) is not an exact round trip")
    with torch.no_grad():
        if not torch.equal(bb.velocity(x_t, t, cond, "trained"), v_tr.detach()):
            raise _fail("adapter_state", "velocity after restoring the trained state differs from before")

    # --- soft_update_old: theta_old <- eta theta_old + (1 - eta) theta (exact mixing) ----------
    old0 = bb.adapter_state("old")
    tr0 = bb.adapter_state("trained")
    if all(torch.equal(old0[k], tr0[k]) for k in old0):
        raise _fail("soft_update_old", "old equals trained after perturbing trained: they share storage")
    bb.soft_update_old(1.0)
    if any(not torch.equal(bb.adapter_state("old")[k], old0[k]) for k in old0):
        raise _fail("soft_update_old", "eta=1 must keep theta_old unchanged")
    eta = 0.3
    bb.soft_update_old(eta)
    mixed = bb.adapter_state("old")
    for k in old0:
        ref = eta * old0[k].double() + (1 - eta) * tr0[k].double()
        rtol, atol = _tol(old0[k].dtype)
        if not torch.allclose(mixed[k].double(), ref, rtol=rtol, atol=atol * float(ref.abs().max() + 1)):
            err = float((mixed[k].double() - ref).abs().max())
            raise _fail("soft_update_old", f"eta=0.3 gives {k!r} off by {err:.3e} from 0.3*old + 0.7*trained")
    if any(not torch.equal(bb.adapter_state("trained")[k], tr0[k]) for k in tr0):
        raise _fail("soft_update_old", "soft_update_old changed the trained weights")
    bb.soft_update_old(0.0)
    now = bb.adapter_state("old")
    if any(not torch.equal(now[k], tr0[k]) for k in tr0):
        raise _fail("soft_update_old", "eta=0 must copy theta into theta_old exactly")
    with torch.no_grad():
        v_o, v_t = bb.velocity(x_t, t, cond, "old"), bb.velocity(x_t, t, cond, "trained")
    if not torch.equal(v_o, v_t):
        raise _fail("soft_update_old", "after eta=0 (old = trained) the old and trained velocities differ")

    # --- save_lora writes files ------------------------------------------------------------
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "lora")
        bb.save_lora(out)
        files = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs]
        if not files or not any(os.path.getsize(f) > 0 for f in files):
            raise _fail("save_lora", f"save_lora({out!r}) wrote no non-empty file")

    if not isinstance(bb.versions(), dict):
        raise _fail("versions", "versions() must return a dict")
