"""Errors a user can act on. The CLI prints them as one paragraph and exits 2."""

from __future__ import annotations


class MarbleError(Exception):
    """Base class: a problem the user can fix (bad config, missing file, broken plugin)."""


class ConfigError(MarbleError):
    """The run config is invalid. The message names the key path and the bad value."""

    def __init__(self, message: str, key: str | None = None):
        self.key = key
        super().__init__(f"config key '{key}': {message}" if key else message)


class PluginError(MarbleError):
    """A plugin failed to load, or two plugins clash. The message names the plugin(s)."""


class RewardError(MarbleError):
    """A reward got bad input or produced a bad score. The message names the reward."""


class BackboneError(MarbleError):
    """A backbone cannot be built or used as asked. The message names the backbone."""
