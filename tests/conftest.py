"""Suite-wide fixtures: one torch thread (the CI machine's 2 cores are shared) and a private
MARBLE_CACHE for the tiny pipelines that tests build."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """A private MARBLE_CACHE for the session (the tiny folders are built into it once)."""
    old = os.environ.get("MARBLE_CACHE")
    path = tmp_path_factory.mktemp("marble_cache")
    os.environ["MARBLE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MARBLE_CACHE", None)
    else:
        os.environ["MARBLE_CACHE"] = old
