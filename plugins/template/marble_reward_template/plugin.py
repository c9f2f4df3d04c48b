"""Entry-point module: registers the reward. Keep it light - no torch import here, so that
``marble plugins`` / ``marble rewards`` list instantly. The factory is a lazy "module:attr" string."""

from marble import RewardSpec, hookimpl

from marble_reward_template.args import BrightnessArgs


@hookimpl
def marble_register_rewards():
    return [
        RewardSpec(
            name="brightness",
            factory="marble_reward_template.reward:BrightnessReward",
            args=BrightnessArgs,
            description="template reward: closeness of mean image brightness to a target (1 = exact)",
        )
    ]
