"""The hooks a marble plugin may implement. Each returns a list of specs."""

from __future__ import annotations

import pluggy

PROJECT = "marble"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def marble_register_rewards() -> list:
    """Return a list of RewardSpec this plugin offers."""


@hookspec
def marble_register_backbones() -> list:
    """Return a list of BackboneSpec this plugin offers."""


@hookspec
def marble_register_balancers() -> list:
    """Return a list of BalancerSpec this plugin offers."""
