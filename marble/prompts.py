"""Prompt sources: text files (one prompt per line), JSONL files (``prompt`` + metadata), inline lists.

Each source has a sampling weight and, optionally, the rewards that apply to it: a reward outside
a source's list is masked out for that source's samples (on top of the reward's own mask).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field

from marble.errors import ConfigError


@dataclass
class Prompt:
    text: str
    metadata: dict = field(default_factory=dict)
    source: int = 0


@dataclass
class Source:
    label: str
    prompts: list[Prompt]
    weight: float
    rewards: list[str] | None


def _read(path: str, index: int, key: str) -> list[Prompt]:
    if not os.path.isfile(path):
        raise ConfigError(f"prompt file not found: {path}", key=key)
    out: list[Prompt] = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    is_jsonl = path.endswith((".jsonl", ".json"))
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if is_jsonl:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{lineno}: malformed JSON line ({exc.msg})", key=key) from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
                raise ConfigError(f"{path}:{lineno}: each line needs a non-empty string field 'prompt'", key=key)
            text = obj.pop("prompt")
            out.append(Prompt(text, obj, index))
        else:
            out.append(Prompt(line.strip(), {}, index))
    if not out:
        raise ConfigError(f"prompt file is empty: {path}", key=key)
    return out


def load_sources(sources, section: str = "prompts") -> list[Source]:
    """Read every configured source (``config.PromptSource`` records)."""
    result = []
    for i, src in enumerate(sources):
        key = f"{section}[{i}]"
        if src.path is not None:
            prompts = _read(src.path, i, f"{key}.path")
            label = src.path
        else:
            texts = [t for t in (src.texts or []) if str(t).strip()]
            if not texts:
                raise ConfigError("'texts' is empty", key=f"{key}.texts")
            prompts = [Prompt(str(t), {}, i) for t in texts]
            label = f"{key}.texts"
        result.append(Source(label, prompts, float(src.weight), list(src.rewards) if src.rewards else None))
    return result


class PromptSampler:
    """Draws prompts: a source by weight, then a prompt uniformly from it. Deterministic in
    ``(seed, iteration)`` so a resumed run draws the same prompts."""

    def __init__(self, sources: list[Source], seed: int):
        self.sources = sources
        self.seed = seed
        self._weights = [s.weight for s in sources]

    def draw(self, n: int, iteration: int) -> list[Prompt]:
        rng = random.Random(self.seed * 1_000_003 + iteration)
        out = []
        for _ in range(n):
            s = rng.choices(self.sources, weights=self._weights)[0] if len(self.sources) > 1 else self.sources[0]
            out.append(s.prompts[rng.randrange(len(s.prompts))])
        return out

    def fixed(self, n: int) -> list[Prompt]:
        """The first n prompts, round-robin over sources (fixed evaluation prompts)."""
        out, i = [], 0
        while len(out) < n and any(i < len(s.prompts) for s in self.sources):
            for s in self.sources:
                if i < len(s.prompts) and len(out) < n:
                    out.append(s.prompts[i])
            i += 1
        return out
