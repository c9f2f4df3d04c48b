"""marble plugin entry point of the demo world (imports nothing heavy)."""

from __future__ import annotations

from marble import BackboneSpec, RewardSpec, hookimpl
from marble_world.config import ContrastArgs, CountArgs, WorldRewardArgs, world_backbone_args


@hookimpl
def marble_register_rewards() -> list:
    return [
        RewardSpec(
            "world_color", "marble_world.rewards:ColorReward", args=WorldRewardArgs,
            description="Demo world: share of foreground pixels in the prompt's colour (metadata 'color')",
        ),
        RewardSpec(
            "world_count", "marble_world.rewards:CountReward", args=CountArgs,
            description="Demo world: 1/(1+|objects found - count asked|) (metadata 'count')",
        ),
        RewardSpec(
            "world_position", "marble_world.rewards:PositionReward", args=WorldRewardArgs,
            description="Demo world: share of foreground pixels in the asked region (metadata 'position')",
        ),
        RewardSpec(
            "world_contrast", "marble_world.rewards:ContrastReward", args=ContrastArgs,
            description="Demo world: RMS luminance contrast, an aesthetic that pulls against colour/count",
        ),
    ]


@hookimpl
def marble_register_backbones() -> list:
    args = world_backbone_args()
    if args is None:  # the diffusers backbone plugin is not installed
        return []
    return [
        BackboneSpec(
            "world-sd3", "marble_world.backbone:build", args=args,
            description="Demo world: the packaged 64 px pretrained SD3-architecture model (sd3 backbone)",
            tiny_args={},
        )
    ]
