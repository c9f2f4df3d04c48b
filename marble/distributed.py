"""Data-parallel training on torch.distributed, set up by Hugging Face accelerate.

``marble train CFG`` runs unchanged under ``accelerate launch -m marble.cli train CFG`` or
``torchrun -m marble.cli train CFG`` (one process per GPU, any number of nodes), and
``marble train CFG --num-processes N`` wraps ``accelerate launch`` for N local processes
(:func:`launch`). On a machine without CUDA the processes use the gloo backend on the CPU.

How the work is split (every rank runs the same code on the same global quantities):

* **Rollout.** The global batch (P prompts x G images, drawn deterministically from
  (seed, iteration)) is cut into global micro-batches of ``micro_batch`` samples; rank r rolls
  out and scores a contiguous block of them (:meth:`Distributed.shard`). Each micro-batch draws
  its initial noise from its own seed (seed, iteration, micro-batch index), so an image does not
  depend on how many processes there are. Each rank scores its own images.
* **Statistics.** Scores and masks are gathered (an exact all-reduce of zero-padded [N, K]
  tensors), so every rank normalizes the *whole* batch (Eq. 3) - prompt groups may straddle
  ranks, and the global std sees every sample - and computes identical advantages, r_k,
  running statistics and logged means. (We gather rewards before normalizing rather than
  keeping groups on one rank.)
* **Training.** Every rank draws the same timesteps and the same split of the batch into
  optimizer steps; rank r trains on the samples of each optimizer step that it rolled out.
  Training noise is drawn per (sample, timestep slot) from the sample's global index. The
  per-sample loss coefficients carry the *global* valid counts 1/(n_k T), so the local
  gradients are partial sums and their all-reduced SUM is the single-process gradient.
  Amortized steps (Proposition 1): one all-reduce of the flat gradient, as DDP would do.
  MARBLE refresh steps: one all-reduce of the [K, D] per-reward gradients (plus the KL
  gradient) before the QP (ALGORITHM.md 2.2), then every rank's alpha is compared (all-gather)
  and a mismatch stops the run.
* **State.** Parameters, optimizer, balancer and normalizers are identical on every rank (a
  checksum of the trained parameters is compared every iteration), so checkpoints written by
  the main process resume with any number of processes.
* **Failures.** Collective-free phases run inside :meth:`Distributed.guard`: an exception on
  one rank is announced to all at the next synchronization point, and every rank stops with
  that rank's error named (no rank is left waiting in a collective). :func:`launch` kills the
  remaining processes when one dies and prints the failing rank's error.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Iterator, Sequence

import torch

from marble.errors import ConfigError, MarbleError

#: Seconds a collective may wait for the slowest rank before the job fails (default 30 min).
ENV_TIMEOUT = "MARBLE_DIST_TIMEOUT"
#: Folder where each failing rank writes ``rank-<r>.json`` for :func:`launch` to report.
ENV_ERROR_DIR = "MARBLE_ERROR_DIR"


class DistributedError(MarbleError):
    """Another rank failed (``peer``: this rank only heard of it), or the ranks disagree (alpha,
    parameters). The message names the rank."""

    def __init__(self, message: str, peer: bool = False):
        super().__init__(message)
        self.peer = peer


def env_world_size() -> int:
    """WORLD_SIZE as set by accelerate launch / torchrun (1 when not launched)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def shard(n: int, world_size: int, rank: int) -> range:
    """A contiguous block of ``range(n)`` for ``rank``; block sizes differ by at most one."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 steps): nearby inputs give unrelated streams."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x = z ^ (z >> 31)
    return x >> 1


class Distributed:
    """The process group as the trainer sees it. ``Distributed()`` is the single process: every
    collective is the identity and nothing is communicated. :meth:`from_env` joins the group
    that accelerate launch / torchrun set up."""

    def __init__(self, accelerator: Any = None):
        self.accelerator = accelerator
        if accelerator is None:
            self.rank, self.world_size, self.local_rank = 0, 1, 0
            self.comm_device = torch.device("cpu")
        else:
            self.rank = int(accelerator.process_index)
            self.world_size = int(accelerator.num_processes)
            self.local_rank = int(accelerator.local_process_index)
            backend = torch.distributed.get_backend()
            self.comm_device = accelerator.device if "nccl" in str(backend) else torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "Distributed":
        """Join the process group described by the launcher's environment (WORLD_SIZE > 1), or
        return the single process."""
        if env_world_size() <= 1:
            return cls()
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, InitProcessGroupKwargs

        timeout = datetime.timedelta(seconds=float(os.environ.get(ENV_TIMEOUT, "1800")))
        acc = Accelerator(cpu=not torch.cuda.is_available(),
                          kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)])
        sharded = [k for k in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{k}", "").lower() == "true"]
        if acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED) or sharded:
            raise ConfigError(
                f"accelerate is configured for {sharded[0] if sharded else acc.distributed_type.value}; marble shards nothing "
                "itself yet - the backbone's three transformer copies (trained, old, reference) would "
                "each stay whole on every GPU. Launch with a plain multi-GPU config "
                "(configs/accelerate_1node_8gpu.yaml) and see the README section 'Multi-GPU' for full "
                "fine-tuning")
        if acc.num_processes <= 1:
            return cls()
        return cls(acc)

    # ---------------------------------------------------------------- collectives
    def _reduce(self, t: torch.Tensor, op) -> torch.Tensor:
        buf = t.to(self.comm_device).contiguous()
        torch.distributed.all_reduce(buf, op=op)
        return buf.to(t.device)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum over ranks (a new tensor; ``t`` itself when single-process)."""
        if not self.enabled:
            return t
        return self._reduce(t, torch.distributed.ReduceOp.SUM)

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``t`` (same shape on every rank), in rank order."""
        if not self.enabled:
            return [t]
        buf = t.to(self.comm_device).contiguous()
        out = [torch.empty_like(buf) for _ in range(self.world_size)]
        torch.distributed.all_gather(out, buf)
        return [o.to(t.device) for o in out]

    def check_same(self, t: torch.Tensor, what: str, hint: str = "") -> None:
        """Verify that every rank holds bit-identical ``t``; every rank raises the same
        DistributedError otherwise (so none is left waiting)."""
        if not self.enabled:
            return
        got = self.all_gather(t.detach().to(torch.float64).reshape(-1).cpu())
        bad = [r for r in range(1, self.world_size) if not torch.equal(got[r], got[0])]
        if bad:
            r = bad[0]
            diff = float((got[r] - got[0]).abs().max())
            raise DistributedError(
                f"{what} differs across ranks: rank 0 has {got[0].tolist()[:8]}, rank {r} has "
                f"{got[r].tolist()[:8]} (max abs difference {diff:.3e}). {hint}".strip())

    def broadcast_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Overwrite ``tensors`` in place with the main process's values (as DDP does at start)."""
        if not self.enabled:
            return
        for t in tensors:
            buf = t.detach().to(self.comm_device)
            torch.distributed.broadcast(buf, src=0)
            with torch.no_grad():
                t.copy_(buf.to(t.device))

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    # ---------------------------------------------------------------- failures
    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run a collective-free phase; at its end every rank learns whether any rank failed.

        The failing rank re-raises its own exception; every other rank raises a
        DistributedError naming the failing rank and its error. Single-process: a no-op."""
        if not self.enabled:
            yield
            return
        error: BaseException | None = None
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            error = exc
        flags = torch.zeros(self.world_size, dtype=torch.float64)
        flags[self.rank] = 1.0 if error is not None else 0.0
        flags = self._reduce(flags, torch.distributed.ReduceOp.SUM)
        failed = [r for r in range(self.world_size) if flags[r] > 0]
        if not failed:
            return
        messages: list[Any] = [None] * self.world_size
        mine = None if error is None else f"{type(error).__name__}: {error}"
        torch.distributed.all_gather_object(messages, mine)
        if error is not None:
            raise error
        first = failed[0]
        others = f" (ranks {', '.join(map(str, failed))} failed)" if len(failed) > 1 else ""
        raise DistributedError(f"rank {first} failed during {what}: {messages[first]}{others}", peer=True)

    def first_on_each_node(self, fn: Callable[[], Any], what: str) -> Any:
        """Run ``fn`` on each node's local main process first (downloads, on-disk caches), then on
        the other ranks; a failure on the first ones is reported to all without a hang."""
        if not self.enabled:
            return fn()
        result = None
        with self.guard(what):
            if self.local_rank == 0:
                result = fn()
        with self.guard(what):
            if self.local_rank != 0:
                result = fn()
        return result

    @contextlib.contextmanager
    def recording_failures(self) -> Iterator[None]:
        """Write this rank's escaping exception to ``$MARBLE_ERROR_DIR/rank-<r>.json`` (read by
        :func:`launch` to name the failing rank)."""
        try:
            yield
        except Exception as exc:
            folder = os.environ.get(ENV_ERROR_DIR)
            if folder and os.path.isdir(folder):
                record = {"rank": self.rank, "time": time.time(), "type": type(exc).__name__,
                          "message": str(exc), "user_error": isinstance(exc, MarbleError),
                          "peer": bool(getattr(exc, "peer", False)),
                          "traceback": traceback.format_exc()}
                try:
                    with open(os.path.join(folder, f"rank-{self.rank}.json"), "w", encoding="utf-8") as f:
                        json.dump(record, f)
                except OSError:
                    pass
            raise


# -------------------------------------------------------------------- the launcher
def stop_process(proc: "subprocess.Popen", grace: float = 30.0) -> None:
    """SIGTERM ``proc``; SIGKILL it if it is still running after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _root_cause(folder: str) -> dict | None:
    records = []
    for name in os.listdir(folder):
        if name.startswith("rank-") and name.endswith(".json"):
            try:
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    records.append(json.load(f))
            except (OSError, ValueError):
                continue
    if not records:
        return None
    # The rank that raised first-hand, not the ranks that only heard of it; then the earliest.
    records.sort(key=lambda r: (bool(r.get("peer")), r.get("time", 0.0), r.get("rank", 0)))
    return records[0]


def launch(config: str, overrides: Sequence[str], num_processes: int, *, debug: bool = False,
           entry: Sequence[str] | None = None, timeout: float | None = None) -> int:
    """``marble train CONFIG --num-processes N``: run ``accelerate launch`` with N local processes
    (one per GPU; gloo on the CPU when there is no GPU) and return an exit code.

    ``entry`` is the child command after the python executable (default ``-m marble.cli``);
    wrappers that register in-process plugins pass their own script. When a process fails, the
    others are stopped (torch.distributed's elastic agent under accelerate) and the failing
    rank's error is printed last. Exit code: 2 for a user error (MarbleError), 1 otherwise."""
    n = int(num_processes)
    if n < 1:
        raise ConfigError(f"--num-processes must be >= 1, got {n}")
    if torch.cuda.is_available() and n > torch.cuda.device_count():
        raise ConfigError(f"--num-processes {n} but only {torch.cuda.device_count()} GPU(s) are visible; "
                          f"use at most one process per GPU (CUDA_VISIBLE_DEVICES selects them)")
    errors = tempfile.mkdtemp(prefix="marble-launch-")
    child = list(entry) if entry is not None else ["-m", "marble.cli"]
    # --multi_gpu selects accelerate's torch.distributed launcher (torchrun's elastic agent, which
    # stops the other processes when one fails); without CUDA the processes then use gloo.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), *child]
    cmd += (["--debug"] if debug else []) + ["train", config, *overrides]
    env = dict(os.environ)
    env[ENV_ERROR_DIR] = errors
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.Popen(cmd, env=env)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        print(f"error: distributed training did not finish within {timeout:.0f} s; stopped it", file=sys.stderr)
        shutil.rmtree(errors, ignore_errors=True)
        return 1
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        shutil.rmtree(errors, ignore_errors=True)
        raise
    root = _root_cause(errors)
    shutil.rmtree(errors, ignore_errors=True)
    if code == 0:
        return 0
    if root is None:
        print(f"error: distributed training failed (launcher exit code {code}); see the output above",
              file=sys.stderr)
        return 1
    print(f"error: distributed training failed on rank {root['rank']} of {n}: {root['type']}: {root['message']}",
          file=sys.stderr)
    return 2 if root.get("user_error") and not root.get("peer") else 1
