"""marble-rl backbones built on diffusers: SD3/SD3.5 (``sd3``), FLUX.1 (``flux``) and their tiny
offline variants (``sd3-tiny``, ``flux-tiny``).

This module stays light (no torch import); the heavy classes load on first attribute access.
"""

from __future__ import annotations

from marble_diffusers.args import FluxArgs, FluxTinyArgs, SD3Args, SD3TinyArgs

__all__ = [
    "SD3Args",
    "SD3TinyArgs",
    "FluxArgs",
    "FluxTinyArgs",
    "SD3Backbone",
    "FluxBackbone",
    "build_tiny_sd3",
    "build_tiny_flux",
    "tiny_sd3_path",
    "tiny_flux_path",
]

_LAZY = {
    "SD3Backbone": "marble_diffusers.sd3",
    "FluxBackbone": "marble_diffusers.flux",
    "build_tiny_sd3": "marble_diffusers.tiny",
    "build_tiny_flux": "marble_diffusers.tiny",
    "tiny_sd3_path": "marble_diffusers.tiny",
    "tiny_flux_path": "marble_diffusers.tiny",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'marble_diffusers' has no attribute {name!r}")
