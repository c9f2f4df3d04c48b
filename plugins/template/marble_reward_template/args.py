from dataclasses import dataclass


@dataclass
class BrightnessArgs:
    """Validated from the YAML ``args`` of the reward (unknown keys and wrong types are errors)."""

    target: float = 0.5  # desired mean brightness in [0, 1]
    only_if_word: str = ""  # if set, the reward applies only to prompts containing this word
