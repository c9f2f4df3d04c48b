"""LAION improved aesthetic predictor ("v2", Schuhmann): an MLP on the L2-normalized CLIP
ViT-L/14 image embedding, trained on SAC + LOGOS + AVA ratings. Scores 1-10, typical 5-6.5
(the scale DDPO / Flow-GRPO report). The prompt is not used.

The MLP layout must match ``sac+logos+ava1-l14-linearMSE.pth`` key for key::

    layers.0  Linear(768, 1024)   layers.1 Dropout(0.2)
    layers.2  Linear(1024, 128)   layers.3 Dropout(0.2)
    layers.4  Linear(128, 64)     layers.5 Dropout(0.1)
    layers.6  Linear(64, 16)
    layers.7  Linear(16, 1)
"""

from __future__ import annotations

from dataclasses import dataclass

from marble import RewardError
from marble_rewards._base import BaseReward, check_batch_size, resolve_device_dtype, resolve_file

CLIP_HUB_ID = "openai/clip-vit-large-patch14"
MLP_FILE = "sac+logos+ava1-l14-linearMSE.pth"
MLP_URL = "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/" + MLP_FILE.replace("+", "%2B")


@dataclass
class AestheticArgs:
    clip_model: str = CLIP_HUB_ID  # CLIPModel folder or hub id (ViT-L/14: 768-d embedding)
    processor: str = CLIP_HUB_ID  # CLIPProcessor folder or hub id
    mlp_path: str = MLP_FILE  # the predictor's weights (.pth state dict)
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 32


def build_mlp(in_dim: int = 768):
    """The predictor's MLP, with the checkpoint's module names (``layers.{0,2,4,6,7}``)."""
    from torch import nn

    class AestheticMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(in_dim, 1024),
                nn.Dropout(0.2),
                nn.Linear(1024, 128),
                nn.Dropout(0.2),
                nn.Linear(128, 64),
                nn.Dropout(0.1),
                nn.Linear(64, 16),
                nn.Linear(16, 1),
            )

        def forward(self, x):
            return self.layers(x)

    return AestheticMLP()


def load_mlp(reward: str, path: str):
    """Load the predictor weights (``torch.load(weights_only=True)``) into ``build_mlp()``."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt file, pickle with code, ...
        raise RewardError(f"reward '{reward}': cannot read the aesthetic MLP weights {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    mlp = build_mlp()
    expected = set(mlp.state_dict())
    got = set(state) if isinstance(state, dict) else set()
    if got != expected:
        raise RewardError(
            f"reward '{reward}': {path} is not an improved-aesthetic-predictor state dict: "
            f"missing keys {sorted(expected - got)}, unexpected keys {sorted(got - expected)[:8]}"
        )
    try:
        mlp.load_state_dict(state)
    except RuntimeError as exc:  # shape mismatch
        raise RewardError(f"reward '{reward}': {path} does not fit the 768-1024-128-64-16-1 MLP: {exc}") from None
    return mlp.eval().requires_grad_(False)


class Aesthetic(BaseReward):
    name = "aesthetic"

    def __init__(self, args: AestheticArgs | None = None):
        from marble_rewards._clip import load_clip_model, load_clip_processor

        args = args or AestheticArgs()
        self.args = args
        self.batch_size = check_batch_size(self.name, args.batch_size)
        self.device, self.dtype = resolve_device_dtype(self.name, args.device, args.dtype)
        path = resolve_file(self.name, "mlp_path", args.mlp_path, repo="", url=MLP_URL)
        self.mlp = load_mlp(self.name, path).to(self.device)  # kept in fp32: it is tiny
        self.model = load_clip_model(self.name, "clip_model", args.clip_model, self.device, self.dtype,
                                     hub_id=CLIP_HUB_ID)
        self.processor = load_clip_processor(self.name, "processor", args.processor, hub_id=CLIP_HUB_ID)
        dim = self.model.config.projection_dim
        if dim != 768:
            raise RewardError(
                f"reward '{self.name}': the CLIP model {args.clip_model!r} has {dim}-d image embeddings, "
                "the aesthetic MLP takes 768 (CLIP ViT-L/14)"
            )

    def _score_batch(self, images, prompts, metadata):
        from marble_rewards._clip import image_embeds

        emb = image_embeds(self.model, self.processor, images)  # L2-normalized, float32
        return self.mlp(emb).squeeze(-1)
