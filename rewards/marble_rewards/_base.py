"""What every reward in this package shares: input checks, batching, the output contract and
finding weight files.

Nothing heavy at module level: torch is imported inside the functions that need it, so the
entry-point module (``marble_rewards.plugin``) and the args dataclasses stay light.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from marble import RewardError, RewardOutput


class BaseReward:
    """Base class: ``score`` validates the inputs, cuts them into batches of ``batch_size``,
    calls ``_score_batch`` once per batch and checks the result.

    Subclasses set ``name`` and implement ``_score_batch(images, prompts, metadata)``, where
    ``images`` is a float32 tensor in [0, 1] on ``self.device`` (uint8 inputs are divided by
    255 first, so both input kinds give the same score). It returns a float tensor [n] and
    optionally a bool mask [n] (as a tuple), or just the scores.
    """

    name: str = "?"
    batch_size: int = 16
    device: Any = None  # torch.device, set by subclasses

    def _fail(self, message: str) -> RewardError:
        return RewardError(f"reward '{self.name}': {message}")

    # ------------------------------------------------------------------ contract
    def score(self, images: Any, prompts: Sequence[str], metadata: Sequence[dict] | None = None) -> RewardOutput:
        import torch

        n = self._check_inputs(images, prompts, metadata)
        metadata = list(metadata) if metadata is not None else [{} for _ in range(n)]
        prompts = list(prompts)
        scores: list[Any] = []
        masks: list[Any] = []
        any_mask = False
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                stop = min(start + self.batch_size, n)
                batch = self._to_float(images[start:stop])
                out = self._score_batch(batch, prompts[start:stop], metadata[start:stop])
                s, m = out if isinstance(out, tuple) else (out, None)
                s = torch.as_tensor(s).detach().to("cpu", torch.float32).reshape(-1)
                if s.numel() != stop - start:
                    raise self._fail(f"internal error: {s.numel()} scores for a batch of {stop - start}")
                if m is None:
                    m = torch.ones(stop - start, dtype=torch.bool)
                else:
                    any_mask = True
                    m = torch.as_tensor(m, dtype=torch.bool).detach().cpu().reshape(-1)
                scores.append(s)
                masks.append(m)
        if n == 0:
            return RewardOutput(scores=torch.zeros(0, dtype=torch.float32), mask=None)
        all_scores = torch.cat(scores)
        mask = torch.cat(masks)
        bad = ~torch.isfinite(all_scores) & mask
        if bad.any():
            idx = bad.nonzero().flatten().tolist()
            raise self._fail(
                f"produced non-finite scores (NaN/inf) for samples {idx[:10]}"
                f"{' ...' if len(idx) > 10 else ''}; check the weights and the dtype (try dtype=fp32)"
            )
        return RewardOutput(scores=all_scores, mask=mask if any_mask else None)

    def _score_batch(self, images: Any, prompts: list[str], metadata: list[dict]) -> Any:  # pragma: no cover
        raise NotImplementedError

    # ------------------------------------------------------------------ input checks
    def _check_inputs(self, images: Any, prompts: Sequence[str], metadata: Sequence[dict] | None) -> int:
        import torch

        if not isinstance(images, torch.Tensor):
            raise self._fail(f"images must be a torch.Tensor N x 3 x H x W, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise self._fail(f"images must have shape N x 3 x H x W (RGB), got {tuple(images.shape)}")
        if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
            raise self._fail(f"images must be float in [0, 1] or uint8 in [0, 255], got dtype {images.dtype}")
        n = images.shape[0]
        if n and (images.shape[2] < 1 or images.shape[3] < 1):
            raise self._fail(f"images have an empty side: {tuple(images.shape)}")
        if images.dtype.is_floating_point and images.numel():
            if not torch.isfinite(images).all():
                raise self._fail("images contain NaN or inf")
            lo, hi = float(images.min()), float(images.max())
            if lo < 0.0 or hi > 1.0:
                raise self._fail(
                    f"float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                    "(convert from [-1, 1] with x / 2 + 0.5 and clamp)"
                )
        if isinstance(prompts, str):
            raise self._fail("prompts must be a list of strings (one per image), got a single string")
        if len(prompts) != n:
            raise self._fail(f"got {n} images but {len(prompts)} prompts")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise self._fail(f"prompt {i} must be a string, got {type(p).__name__}")
        if metadata is not None and len(metadata) != n:
            raise self._fail(f"got {n} images but {len(metadata)} metadata entries")
        return n

    def _to_float(self, images: Any) -> Any:
        """A batch on ``self.device`` as float32 in [0, 1] (uint8 / 255, exactly as for floats)."""
        import torch

        x = images.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            return x.to(torch.float32) / 255.0
        return x.to(torch.float32)


# ---------------------------------------------------------------------- args helpers
def check_batch_size(reward: str, batch_size: int) -> int:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise RewardError(f"reward '{reward}': batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def resolve_device_dtype(reward: str, device: str, dtype: str):
    """(torch.device, torch.dtype) from the args' names, with errors that name the reward."""
    from marble.devices import resolve_device, resolve_dtype

    try:
        dev = resolve_device(device)
    except (RuntimeError, ValueError) as exc:
        raise RewardError(f"reward '{reward}': bad device {device!r}: {exc}") from None
    try:
        dt = resolve_dtype(dtype, dev)
    except ValueError as exc:
        raise RewardError(f"reward '{reward}': {exc}") from None
    return dev, dt


# ---------------------------------------------------------------------- finding weights
def looks_like_hub_id(value: str) -> bool:
    """``org/name`` with no path syntax (no leading '/', '.', '~', no backslash, one slash)."""
    return (
        value.count("/") == 1
        and not value.startswith(("/", ".", "~"))
        and "\\" not in value
        and all(part.strip() for part in value.split("/"))
    )


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_file(reward: str, arg: str, value: str, *, repo: str, url: str) -> str:
    """The local path of a single weight file.

    ``value`` is a path. If it exists it is used. Otherwise, when it is a bare file name and
    ``repo`` (a hub repository that hosts a file of that name) is set, the Hugging Face cache is
    consulted and, unless HF_HUB_OFFLINE=1, the file is downloaded. Anything else is an error
    that names the reward, the path looked for and where to get the file.
    """
    path = os.path.expanduser(value)
    if os.path.isfile(path):
        return path
    how = f"download it from {url}"
    if repo:
        how += f" (Hugging Face repo '{repo}', file '{os.path.basename(path)}')"
    bare = os.sep not in value and "/" not in value
    if repo and bare:
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:  # pragma: no cover - transformers and open_clip both need it
            hf_hub_download = None
        if hf_hub_download is not None:
            try:
                return hf_hub_download(repo, value, local_files_only=True)
            except Exception:  # noqa: BLE001 - not in the cache
                pass
            if not hub_offline():
                try:
                    return hf_hub_download(repo, value)
                except Exception as exc:  # noqa: BLE001
                    raise RewardError(
                        f"reward '{reward}': weight file {value!r} ({arg}) is not at {os.path.abspath(path)}, "
                        f"not in the Hugging Face cache, and downloading it failed ({type(exc).__name__}). "
                        f"To get it: {how}, then pass {arg}=/path/to/{os.path.basename(path)}"
                    ) from None
    cache = f" (nor in the Hugging Face cache of '{repo}')" if repo and bare else ""
    raise RewardError(
        f"reward '{reward}': weight file not found: {os.path.abspath(path)}{cache} ({arg}={value!r}). "
        f"To get it: {how}, then pass {arg}=/path/to/{os.path.basename(path)}"
    )


def from_pretrained(reward: str, arg: str, cls: Any, value: str, *, what: str, hub_id: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(value)`` for a local folder or a hub id, with a clear error.

    A hub id is looked up in the local cache first (no network), then downloaded unless
    HF_HUB_OFFLINE=1. A path that does not exist fails at once (no network)."""
    path = os.path.expanduser(value)
    local = os.path.isdir(path)
    if not local and not looks_like_hub_id(value):
        raise RewardError(
            f"reward '{reward}': {what} folder not found: {os.path.abspath(path)} ({arg}={value!r}). "
            f"To get it: `hf download {hub_id} --local-dir DIR` (Hugging Face hub id '{hub_id}') and pass "
            f"{arg}=DIR, or pass the hub id itself to use the Hugging Face cache."
        )
    try:
        return cls.from_pretrained(path if local else value, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        first = exc
    if local:
        detail = " ".join(str(first).split())
        raise RewardError(
            f"reward '{reward}': cannot load the {what} from {os.path.abspath(path)} ({arg}={value!r}): {detail}. "
            f"To get it: `hf download {hub_id} --local-dir DIR` and pass {arg}=DIR"
        ) from None
    if hub_offline():
        raise RewardError(
            f"reward '{reward}': the {what} '{value}' ({arg}) is not a local folder and not in the Hugging Face "
            f"cache, and HF_HUB_OFFLINE=1 forbids downloading it. To get it: `hf download {value} --local-dir DIR` "
            f"on a machine with internet access and pass {arg}=DIR"
        ) from None
    try:
        return cls.from_pretrained(value, **kwargs)
    except (OSError, ValueError) as exc:
        raise RewardError(
            f"reward '{reward}': cannot load the {what} '{value}' ({arg}): not a local folder, not in the "
            f"Hugging Face cache, and the download failed: {exc}. To get it: `hf download {value} "
            f"--local-dir DIR` on a machine with internet access, then pass {arg}=DIR"
        ) from None
