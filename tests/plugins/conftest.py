"""Fixtures for the first-party backbone plugin tests (plugins/diffusers).

Tiny pipelines are built once per session into a private MARBLE_CACHE; a backbone is built
once per module and its adapter states are restored after every test that uses it.
"""

from __future__ import annotations


import pytest
import torch  # noqa: F401  (the one-thread and tiny_cache fixtures live in tests/conftest.py)


def restoring(backbone):
    """Yield ``backbone`` and put both adapters back afterwards (use with ``yield from``)."""
    states = {w: backbone.adapter_state(w) for w in ("trained", "old")}
    yield backbone
    for w, s in states.items():
        backbone.load_adapter_state(w, s)
    for p in backbone.trainable_parameters():
        p.grad = None


@pytest.fixture
def perturb():
    """perturb(backbone, scale, seed): give the trained adapter non-zero deterministic weights
    (LoRA B starts at zero, so a fresh adapter equals the base model)."""

    def _perturb(backbone, scale=0.05, seed=0):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in backbone.trainable_parameters():
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))

    return _perturb


@pytest.fixture(scope="module")
def sd3_module(tiny_cache):
    from marble_diffusers import SD3Backbone, SD3TinyArgs

    return SD3Backbone(SD3TinyArgs())


@pytest.fixture
def sd3(sd3_module):
    """The module's fp32 sd3-tiny backbone; adapters restored after the test."""
    yield from restoring(sd3_module)


@pytest.fixture(scope="module")
def sd3_64_module(tiny_cache):
    from marble_diffusers import SD3Backbone, SD3TinyArgs

    return SD3Backbone(SD3TinyArgs(dtype="fp64"))


@pytest.fixture
def sd3_64(sd3_64_module):
    """The module's float64 sd3-tiny backbone; adapters restored after the test."""
    yield from restoring(sd3_64_module)


@pytest.fixture(scope="module")
def flux_module(tiny_cache):
    from marble_diffusers import FluxBackbone, FluxTinyArgs

    return FluxBackbone(FluxTinyArgs())


@pytest.fixture
def flux(flux_module):
    """The module's fp32 flux-tiny backbone; adapters restored after the test."""
    yield from restoring(flux_module)
