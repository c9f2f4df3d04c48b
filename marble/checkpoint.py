"""Atomic checkpoints: everything is written into a temporary folder that is renamed into place,
so a crash never leaves a half-written checkpoint where the last good one was."""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Callable

from marble.errors import MarbleError

_NAME = re.compile(r"^checkpoint-(\d+)$")


def atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_checkpoint(run_dir: str, iteration: int, fill: Callable[[str], None], keep: int = 2) -> str:
    """Create ``run_dir/checkpoint-<iteration>`` atomically; ``fill(tmp_dir)`` writes its files.
    Older checkpoints beyond the newest ``keep`` are removed after the new one is in place."""
    final = os.path.join(run_dir, f"checkpoint-{iteration:06d}")
    tmp = os.path.join(run_dir, f".tmp-checkpoint-{iteration:06d}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        fill(tmp)
        atomic_write_text(os.path.join(tmp, "COMPLETE"), json.dumps({"iteration": iteration}))
        if os.path.exists(final):
            old = final + f".old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str) -> list[str]:
    """Complete checkpoints of a run folder, oldest first."""
    if not os.path.isdir(run_dir):
        return []
    found = []
    for name in os.listdir(run_dir):
        m = _NAME.match(name)
        path = os.path.join(run_dir, name)
        if m and os.path.isfile(os.path.join(path, "COMPLETE")):
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str) -> str:
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise MarbleError(f"resume: no complete checkpoint in {run_dir} (expected a folder checkpoint-NNNNNN "
                          f"with a COMPLETE file; was the run started with this output_dir?)")
    return ckpts[-1]
