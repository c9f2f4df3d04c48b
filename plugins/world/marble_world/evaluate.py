"""Score a world pipeline's samples with the world rewards (and ``ocr`` when installed).

    python -m marble_world.evaluate --model plugins/world/marble_world/model --n 64 \\
        --guidance 1.0 --random-baseline --grid eval.png

Samples one image per prompt of the committed eval set (10 Euler steps, seeded), scores it,
and prints one line per reward: the mean over the samples the reward applies to. With
``--random-baseline`` the same pipeline with a freshly initialised (random) transformer is
scored too, so the numbers show what pretraining bought.
"""

from __future__ import annotations

import argparse
import json
import sys


def load_pipeline(model: str | None = None):
    from diffusers import StableDiffusion3Pipeline

    from marble_world.config import world_model_path

    pipe = StableDiffusion3Pipeline.from_pretrained(model or world_model_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, prompts, *, seed: int = 0, steps: int = 10, guidance: float = 1.0, batch: int = 32):
    """Images N x 3 x 64 x 64 in [0, 1] for ``prompts`` (seeded; one generator for the run)."""
    import torch

    from marble_world.model import MAX_SEQUENCE_LENGTH, RESOLUTION

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(prompts), batch):
        res = pipe(
            prompt=list(prompts[i : i + batch]), num_inference_steps=steps, guidance_scale=guidance,
            height=RESOLUTION, width=RESOLUTION, max_sequence_length=MAX_SEQUENCE_LENGTH, generator=g,
            output_type="pt",
        )
        out.append(res.images.float().clamp(0, 1))
    return torch.cat(out)


def score_all(images, prompts, metadata, with_ocr: bool = True) -> dict[str, float]:
    """Mean score of each reward over the samples it applies to."""
    from marble_world.rewards import ColorReward, ContrastReward, CountReward, PositionReward

    rewards = [ColorReward(), CountReward(), PositionReward(), ContrastReward()]
    if with_ocr:
        try:
            from marble_rewards.ocr import OCRArgs, OCRReward

            rewards.append(OCRReward(OCRArgs(num_threads=1)))
        except Exception:  # the rewards plugin (or rapidocr) is not installed
            pass
    result = {}
    for r in rewards:
        out = r.score(images, list(prompts), list(metadata))
        s = out.scores.float()
        if out.mask is not None:
            s = s[out.mask]
        result[getattr(r, "name", type(r).__name__)] = float(s.mean()) if len(s) else float("nan")
    return result


def main(argv=None) -> int:
    import torch

    from marble_world.prompts import prompt_file

    ap = argparse.ArgumentParser(prog="python -m marble_world.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="pipeline folder (default: the packaged model)")
    ap.add_argument("--prompts", default=None, help="JSONL prompt file (default: the committed eval set)")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0])
    ap.add_argument("--random-baseline", action="store_true")
    ap.add_argument("--no-ocr", action="store_true")
    ap.add_argument("--grid", default=None, help="save a grid PNG of the first 16 samples (first guidance)")
    ap.add_argument("--json", default=None, help="write the scores as JSON here")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    recs = [json.loads(l) for l in open(a.prompts or prompt_file("eval")) if l.strip()][: a.n]
    prompts = [r["prompt"] for r in recs]
    metas = [{k: v for k, v in r.items() if k != "prompt"} for r in recs]
    pipe = load_pipeline(a.model)
    variants = [("pretrained", pipe.transformer)]
    if a.random_baseline:
        from marble_world.model import build_transformer

        variants.append(("random", build_transformer(seed=a.seed).eval()))
    table = {}
    for label, tr in variants:
        pipe.transformer = tr
        for g in a.guidance:
            imgs = sample(pipe, prompts, seed=a.seed, steps=a.steps, guidance=g)
            key = f"{label} cfg={g:g}"
            table[key] = score_all(imgs, prompts, metas, with_ocr=not a.no_ocr)
            if a.grid and label == "pretrained" and g == a.guidance[0]:
                from marble_world.report import save_grid

                save_grid(imgs[:16], prompts[:16], a.grid)
    names = list(next(iter(table.values())))
    print("| model | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for key, row in table.items():
        print(f"| {key} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(table, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
