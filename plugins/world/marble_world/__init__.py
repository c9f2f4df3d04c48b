"""marble-world: the embedded demo world of marble-rl (generator, rewards, tiny SD3, report)."""

__version__ = "0.1.0"
