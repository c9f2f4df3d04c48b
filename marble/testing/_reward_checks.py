from __future__ import annotations

from typing import Any, Sequence


def check_reward(reward: Any, images: Any = None, prompts: Sequence[str] | None = None,
                 metadata: Sequence[dict] | None = None, *, size: int = 64) -> Any:
    """Conformance checks for a reward object. Raises AssertionError naming what is wrong.

    Checks: ``score`` exists; scores are a float tensor of shape [N] without NaN/inf where the
    mask applies; the mask is None or a bool tensor [N]; the result does not depend on the batch
    (each sample scored alone gives the same score); scoring twice gives the same scores; the
    input images are not modified. Returns the RewardOutput of the first call."""
    import torch

    from marble import RewardOutput

    name = type(reward).__name__
    assert callable(getattr(reward, "score", None)), f"{name}: has no score(images, prompts, metadata) method"
    if images is None:
        g = torch.Generator().manual_seed(0)
        images = torch.rand(3, 3, size, size, generator=g)
        images[1] = 0.5
    n = images.shape[0]
    prompts = list(prompts) if prompts is not None else [f'a photo of a cat holding a sign that says "hi{i}"' for i in range(n)]
    metadata = list(metadata) if metadata is not None else [{} for _ in range(n)]
    assert len(prompts) == n and len(metadata) == n, "check_reward: images, prompts and metadata differ in length"
    before = images.clone()
    out = reward.score(images, prompts, metadata)
    assert isinstance(out, RewardOutput), f"{name}.score returned {type(out).__name__}, expected RewardOutput"
    assert torch.equal(images, before), f"{name}.score modified its input images"
    s = out.scores
    assert isinstance(s, torch.Tensor), f"{name}: scores must be a torch.Tensor, got {type(s).__name__}"
    assert s.shape == (n,), f"{name}: scores must have shape [{n}], got {tuple(s.shape)}"
    assert s.dtype.is_floating_point, f"{name}: scores must be floating point, got {s.dtype}"
    mask = out.mask
    if mask is not None:
        assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool, f"{name}: mask must be a bool tensor or None"
        assert mask.shape == (n,), f"{name}: mask must have shape [{n}], got {tuple(mask.shape)}"
        applies = mask
    else:
        applies = torch.ones(n, dtype=torch.bool)
    assert torch.isfinite(s[applies]).all(), f"{name}: non-finite scores where the mask applies: {s.tolist()}"
    again = reward.score(images, prompts, metadata)
    assert torch.allclose(again.scores[applies].double(), s[applies].double(), rtol=1e-4, atol=1e-5), \
        f"{name}: scoring the same batch twice gave different scores (not deterministic/stateless)"
    for i in range(n):
        single = reward.score(images[i:i + 1], prompts[i:i + 1], metadata[i:i + 1])
        if applies[i]:
            assert torch.allclose(single.scores.double(), s[i:i + 1].double(), rtol=1e-3, atol=1e-4), \
                f"{name}: sample {i} scored alone ({float(single.scores[0])}) differs from in a batch ({float(s[i])})"
    return out
