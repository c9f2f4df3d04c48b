"""Images per second for every marble-rewards reward.

    python benchmarks/bench_rewards.py                       # tiny random checkpoints, CPU, 1 thread
    python benchmarks/bench_rewards.py --full --device cuda  # published architectures, random weights

Checkpoints come from ``marble_rewards.testing`` (real on-disk formats, random weights: the
cost of a forward pass does not depend on the weight values). Rewards are built through
marble's plugin host, as a training run builds them. Images are 512 px gradients with a
rendered word, and the prompts quote that word, so the OCR reward does its full work.
Timing: one warm-up call, then the median of ``--repeats`` calls (CUDA synchronized).
On the CPU only ratios mean anything; absolute numbers come from a GPU run with ``--full``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ALL = ["pickscore", "hpsv2", "aesthetic", "clipscore", "ocr", "jpeg_compressibility", "jpeg_incompressibility"]


def make_images(n: int, size: int):
    import numpy as np
    import torch
    from PIL import Image, ImageDraw, ImageFont

    words = ["hello", "Marble", "OPEN", "coffee", "Diffusion", "STOP", "Library", "Pizza"]
    font_path = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
    font = ImageFont.truetype(font_path, size // 8) if os.path.isfile(font_path) else ImageFont.load_default(size // 8)
    imgs, prompts = [], []
    rng = np.random.default_rng(0)
    for i in range(n):
        grad = np.linspace(0, 255, size, dtype=np.float32)
        base = np.stack([np.add.outer(grad * a, grad * (1 - a)) / 2 for a in rng.random(3)], -1)
        im = Image.fromarray(base.clip(0, 255).astype(np.uint8))
        word = words[i % len(words)]
        ImageDraw.Draw(im).text((size // 8, size // 2 - size // 16), word, fill=(0, 0, 0), font=font)
        imgs.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
        prompts.append(f'a poster that says "{word}"')
    return torch.stack(imgs).float() / 255, prompts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="full-size random models (needs GBs; meant for a GPU)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16")
    p.add_argument("--images", type=int, default=16, help="images per score() call")
    p.add_argument("--batch-size", type=int, default=16, help="the rewards' batch_size arg")
    p.add_argument("--size", type=int, default=512, help="image side in pixels")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rewards", default=",".join(ALL), help="comma-separated subset")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--ckpt-dir", default=None, help="where to write the random checkpoints (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)

    import torch

    from marble.devices import resolve_device
    from marble.host import build_reward
    from marble_rewards.testing import make_all

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    names = [n.strip() for n in args.rewards.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL))
    if unknown:
        p.error(f"unknown rewards {unknown}; choose from {ALL}")
    size = "full" if args.full else "tiny"
    tmp = None
    root = args.ckpt_dir
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="marble-bench-rewards-")
        root = tmp.name
    t0 = time.perf_counter()
    ckpt_args = make_all(root, size, init_device=str(device) if device.type == "cuda" else "cpu", names=names)
    print(f"[bench] {size} checkpoints written to {root} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    images, prompts = make_images(args.images, args.size)
    meta = [{} for _ in prompts]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for name in names:
        extra = {"device": str(device), "dtype": args.dtype, "batch_size": args.batch_size}
        if name == "ocr":
            extra = {"device": "cpu" if device.type == "cpu" else "auto", "batch_size": args.batch_size,
                     "num_threads": args.threads}
        t0 = time.perf_counter()
        reward = build_reward(name, {**ckpt_args[name], **extra})
        build_s = time.perf_counter() - t0
        reward.score(images, prompts, meta)  # warm-up
        sync()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = reward.score(images, prompts, meta)
            sync()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        applies = int(out.mask.sum()) if out.mask is not None else len(prompts)
        rows.append({"reward": name, "images_per_s": len(prompts) / med, "median_s": med, "build_s": build_s,
                     "mean_score": float(out.scores.mean()), "applies": applies})
        print(f"[bench] {name}: {len(prompts) / med:.1f} images/s", file=sys.stderr)
        del reward
        if device.type == "cuda":
            torch.cuda.empty_cache()

    mem = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == "cuda" else ""
    print(f"\nreward scoring: {size} random checkpoints, device {device}, dtype {args.dtype}, "
          f"{args.images} images of {args.size} px per call, batch_size {args.batch_size}, "
          f"{args.threads} CPU thread(s){mem}")
    print(f"{'reward':<24}{'images/s':>10}{'median s':>10}{'build s':>9}")
    for r in rows:
        print(f"{r['reward']:<24}{r['images_per_s']:>10.1f}{r['median_s']:>10.3f}{r['build_s']:>9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": size, "device": str(device), "dtype": args.dtype, "images": args.images,
                       "image_px": args.size, "batch_size": args.batch_size, "results": rows}, f, indent=2)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
