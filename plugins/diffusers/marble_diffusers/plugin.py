"""Entry point ``diffusers`` of the ``marble.plugins`` group.

Imports nothing heavy: the backbone classes are named as lazy ``"module:attr"`` factories.
"""

from __future__ import annotations

from marble import BackboneSpec, hookimpl
from marble_diffusers.args import FluxArgs, FluxTinyArgs, SD3Args, SD3TinyArgs, tiny_args_dict


@hookimpl
def marble_register_backbones():
    """The SD3/SD3.5 and FLUX.1 backbones and their tiny offline variants."""
    return [
        BackboneSpec(
            name="sd3",
            factory="marble_diffusers.sd3:SD3Backbone",
            args=SD3Args,
            description="Stable Diffusion 3 / 3.5 (medium, large) via diffusers, two LoRA adapters",
            tiny_args=tiny_args_dict(SD3TinyArgs),
        ),
        BackboneSpec(
            name="sd3-tiny",
            factory="marble_diffusers.sd3:SD3Backbone",
            args=SD3TinyArgs,
            description="tiny random SD3.5-style pipeline built offline (tests, demos)",
            tiny_args={},
        ),
        BackboneSpec(
            name="flux",
            factory="marble_diffusers.flux:FluxBackbone",
            args=FluxArgs,
            description="FLUX.1-dev / schnell via diffusers (guidance-distilled), two LoRA adapters",
            tiny_args=tiny_args_dict(FluxTinyArgs),
        ),
        BackboneSpec(
            name="flux-tiny",
            factory="marble_diffusers.flux:FluxBackbone",
            args=FluxTinyArgs,
            description="tiny random FLUX.1-dev-style pipeline built offline (tests, demos)",
            tiny_args={},
        ),
    ]
