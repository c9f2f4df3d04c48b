"""A minimal reward plugin for marble-rl (the template third parties copy)."""
