"""Helpers for plugin authors' own test suites.

* ``register_plugin(obj, name=...)``: a context manager that makes a plugin (a module or any
  object with ``@hookimpl`` methods) visible to marble for the duration of a test, without
  installing it. ``marble_plugin`` is the same as a pytest fixture factory.
* ``check_reward(reward)``: conformance checks every reward should pass.
* ``check_backbone(backbone)``: conformance checks every backbone should pass.
"""

from marble.testing._fixtures import marble_plugin, register_plugin
from marble.testing._reward_checks import check_reward

__all__ = ["register_plugin", "marble_plugin", "check_reward", "check_backbone"]


def __getattr__(name):
    if name == "check_backbone":
        from marble.testing._backbone_checks import check_backbone

        return check_backbone
    raise AttributeError(name)
