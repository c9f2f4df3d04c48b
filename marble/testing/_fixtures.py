from __future__ import annotations

import contextlib
from typing import Any, Iterator

from marble import host


@contextlib.contextmanager
def register_plugin(obj: Any, name: str | None = None, distribution: str = "test-plugin") -> Iterator[Any]:
    """Register ``obj`` (a module or object with @hookimpl functions) as a plugin for the
    duration of the ``with`` block. The process-wide host is rediscovered on entry and exit."""
    entry = (name or getattr(obj, "__name__", type(obj).__name__), obj, distribution)
    host._EXTRA.append(entry)
    host.reset_host()
    try:
        yield obj
    finally:
        host._EXTRA.remove(entry)
        host.reset_host()


try:  # a pytest fixture when pytest is present
    import pytest

    @pytest.fixture
    def marble_plugin():
        """Fixture: ``marble_plugin(obj, name=None)`` registers a plugin until the test ends."""
        stack = contextlib.ExitStack()

        def _register(obj: Any, name: str | None = None, distribution: str = "test-plugin") -> Any:
            return stack.enter_context(register_plugin(obj, name, distribution))

        with stack:
            yield _register
except ImportError:  # pragma: no cover
    marble_plugin = None  # type: ignore[assignment]
