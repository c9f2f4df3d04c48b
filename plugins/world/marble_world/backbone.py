"""``world-sd3``: the ``sd3`` backbone (marble_diffusers) on the packaged pretrained world model."""

from __future__ import annotations

import dataclasses


def build(args):
    from marble_diffusers.sd3 import SD3Backbone

    from marble_world.config import world_model_path

    if not args.model:
        args = dataclasses.replace(args, model=world_model_path())
    return SD3Backbone(args)
