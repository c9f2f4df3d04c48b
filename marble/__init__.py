"""marble-rl: fine-tune text-to-image diffusion models against several rewards at once."""

from marble._specs import BackboneSpec, BalancerSpec, Reward, RewardOutput, RewardSpec
from marble.errors import ConfigError, MarbleError, PluginError, RewardError, BackboneError
from marble.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "hookimpl",
    "RewardSpec",
    "BackboneSpec",
    "BalancerSpec",
    "Reward",
    "RewardOutput",
    "MarbleError",
    "ConfigError",
    "PluginError",
    "RewardError",
    "BackboneError",
    "__version__",
]
