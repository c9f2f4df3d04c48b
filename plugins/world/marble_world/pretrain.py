"""Pretrain the world's tiny SD3 model: first the VAE, then the transformer (flow matching).

    python -m marble_world.pretrain --out plugins/world/marble_world/model --seed 0

Data are drawn on the fly from the world (a seeded ``random.Random``), so the same seed and
step counts give the same weights (one CPU thread; torch's CPU kernels are deterministic).

1. VAE (AutoencoderKL, factor 4): MSE reconstruction in [-1, 1] + 1e-7 x KL, Adam.
   Then ``shift_factor`` / ``scaling_factor`` = mean / (1 / std) of the latents, as SD3 does.
2. Transformer: x0 = (mean latent - shift) * scale, eps ~ N(0, I), t ~ logit-normal(0, 1),
   x_t = (1 - t) x0 + t eps, target v = eps - x0, loss ||v_theta(x_t, t, c) - v||^2.
   Captions are dropped (empty prompt) 10% of the time so classifier-free guidance works.
The result is written with ``StableDiffusion3Pipeline.save_pretrained`` (safetensors), plus
``loss.csv`` / ``loss.png`` and ``pretrain.json`` (settings, times).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path


def _batch(rng: random.Random, n: int, size: int, text_fraction: float):
    import numpy as np
    import torch

    from marble_world.prompts import sample_example
    from marble_world.world import render

    prompts, arrays = [], []
    for _ in range(n):
        cap, _, scene = sample_example(rng, size, text_fraction)
        prompts.append(cap)
        arrays.append(np.asarray(render(scene), dtype=np.float32))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return prompts, x


class _TextCache:
    """Prompt -> (sequence embedding, pooled embedding), computed once per distinct prompt."""

    def __init__(self, pipe, max_sequence_length: int):
        self.pipe, self.msl, self.cache = pipe, max_sequence_length, {}

    def __call__(self, prompts):
        import torch

        todo = sorted({p for p in prompts if p not in self.cache})
        if todo:
            with torch.no_grad():
                pe, _, pooled, _ = self.pipe.encode_prompt(
                    todo, todo, todo, do_classifier_free_guidance=False, max_sequence_length=self.msl
                )
            for i, p in enumerate(todo):
                self.cache[p] = (pe[i], pooled[i])
        return (torch.stack([self.cache[p][0] for p in prompts]), torch.stack([self.cache[p][1] for p in prompts]))


def _lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    prog = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * prog)))


def _foreground(x):
    """N x 1 x H x W float mask: pixels far (> 0.25 in [0, 1] units) from the border median."""
    import torch

    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=2)
    bg = border.median(dim=2).values[:, :, None, None]
    return ((x - bg).abs().amax(dim=1, keepdim=True) > 0.5).float()  # 0.25 in [0, 1] = 0.5 in [-1, 1]


def vae_quality(vae, seed: int, size: int = 64, n: int = 128) -> dict:
    """Reconstruction PSNR and the world rewards on reconstructions of world pictures."""
    import torch

    from marble_world.prompts import sample_example
    from marble_world.rewards import ColorReward, CountReward, PositionReward
    from marble_world.world import render_array

    rng = random.Random(seed + 14)
    ex = [sample_example(rng, size, 0.25) for _ in range(n)]
    x = torch.stack([torch.from_numpy(render_array(s)) for _, _, s in ex])
    with torch.no_grad():
        rec = ((vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
    out = {"psnr_db": float(10 * torch.log10(1.0 / (rec - x).pow(2).mean()))}
    prompts, metas = [c for c, _, _ in ex], [m for _, m, _ in ex]
    for r in (ColorReward(), CountReward(), PositionReward()):
        o = r.score(rec, prompts, metas)
        out[r.name] = float(o.scores[o.mask].mean())
    try:
        from marble_rewards.ocr import OCRArgs, OCRReward

        o = OCRReward(OCRArgs(num_threads=1)).score(rec, prompts, metas)
        out["ocr"] = float(o.scores[o.mask].mean())
    except Exception:
        pass
    return out, x, rec, prompts


def train_vae(vae, *, steps: int, batch: int, seed: int, lr: float, size: int, log):
    import torch

    rng = random.Random(seed + 11)
    torch.manual_seed(seed + 12)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    vae.train()
    for step in range(steps):
        _, x = _batch(rng, batch, size, text_fraction=0.3)
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr, 20)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        err = rec - x
        mse = err.pow(2).mean()
        # objects cover ~10% of a picture: weight their pixels 5x so colours are learned early
        w = 1.0 + 4.0 * _foreground(x)
        loss = (w * (err.abs() + err.pow(2))).mean() + 1e-7 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log("vae", step, mse.item())
    vae.eval()
    # latent statistics -> shift / scaling factors (SD3 convention: z = (mu - shift) * scale)
    with torch.no_grad():
        _, x = _batch(random.Random(seed + 13), 256, size, text_fraction=0.25)
        mu = vae.encode(x).latent_dist.mean
        shift = float(mu.mean())
        scale = float(1.0 / (mu - shift).std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return {"shift_factor": shift, "scaling_factor": scale}


def train_transformer(pipe, *, steps: int, batch: int, seed: int, lr: float, size: int, msl: int,
                      text_fraction: float, cfg_drop: float, log):
    import torch

    tr, vae = pipe.transformer, pipe.vae
    cache = _TextCache(pipe, msl)
    rng = random.Random(seed + 21)
    gen = torch.Generator().manual_seed(seed + 22)
    torch.manual_seed(seed + 23)
    opt = torch.optim.AdamW(tr.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    sh, sc = vae.config.shift_factor, vae.config.scaling_factor
    tr.train()
    for step in range(steps):
        prompts, x = _batch(rng, batch, size, text_fraction)
        prompts = ["" if rng.random() < cfg_drop else p for p in prompts]
        with torch.no_grad():
            x0 = (vae.encode(x).latent_dist.mean - sh) * sc
        pe, pooled = cache(prompts)
        eps = torch.randn(x0.shape, generator=gen)
        t = torch.sigmoid(torch.randn(batch, generator=gen))  # logit-normal(0, 1)
        tb = t.view(-1, 1, 1, 1)
        x_t = (1 - tb) * x0 + tb * eps
        target = eps - x0
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr, 100)
        v = tr(hidden_states=x_t, timestep=t * 1000, encoder_hidden_states=pe, pooled_projections=pooled).sample
        loss = (v - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tr.parameters(), 1.0)
        opt.step()
        log("transformer", step, loss.item())
    tr.eval()


def plot_loss(csv_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, phase, ylabel in zip(axes, ("vae", "transformer"), ("reconstruction MSE", "flow-matching loss")):
        pts = [(int(r[1]), float(r[2])) for r in rows if r[0] == phase]
        if not pts:
            continue
        xs, ys = zip(*pts)
        k = max(1, len(ys) // 50)
        smooth = [sum(ys[max(0, i - k) : i + 1]) / len(ys[max(0, i - k) : i + 1]) for i in range(len(ys))]
        ax.plot(xs, ys, alpha=0.3, lw=0.8)
        ax.plot(xs, smooth, lw=1.5)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.set_title(phase)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def pretrain(out: str | Path, *, seed: int = 0, vae_steps: int = 600, steps: int = 1200, batch: int = 32,
             vae_batch: int = 16, lr: float = 8e-4, vae_lr: float = 2e-3, text_fraction: float = 0.2,
             cfg_drop: float = 0.1, size: int = 64, threads: int = 1, log_every: int = 50,
             transformer_overrides: dict | None = None, quiet: bool = False,
             stages: tuple = ("vae", "transformer"), evaluate_vae: bool = True):
    """Train and save the pipeline folder at ``out``; returns the pipeline."""
    import torch

    from marble_world import model

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / ("loss.csv" if "vae" in stages else "loss_transformer.csv")
    csv = open(csv_path, "w")
    csv.write("phase,step,loss\n")
    t_start = time.time()
    last = {"t": t_start}

    def log(phase, step, value):
        csv.write(f"{phase},{step},{value:.6g}\n")
        if not quiet and (step % log_every == 0):
            now = time.time()
            print(f"[{now - t_start:7.1f}s] {phase} step {step} loss {value:.4f}", flush=True)
            csv.flush()

    pipe = model.build_pipeline(seed=seed)
    if transformer_overrides:
        pipe.transformer = model.build_transformer(seed, **transformer_overrides)
    vae_json = out / "pretrain_vae.json"
    if "vae" in stages:
        t0 = time.time()
        vae_info = train_vae(pipe.vae, steps=vae_steps, batch=vae_batch, seed=seed, lr=vae_lr, size=size, log=log)
        vae_info["seconds"] = round(time.time() - t0, 1)
        vae_info["steps"], vae_info["batch"], vae_info["lr"] = vae_steps, vae_batch, vae_lr
        pipe.vae.save_pretrained(out / "vae")
        if evaluate_vae:
            q, x, rec, prompts = vae_quality(pipe.vae, seed, size)
            vae_info["quality"] = q
            from marble_world.report import save_grid

            save_grid(torch.cat([x[:8], rec[:8]]), prompts[:8] * 2, out / "vae_reconstructions.png", cell=96)
        vae_json.write_text(json.dumps(vae_info, indent=2) + "\n")
        if not quiet:
            print(f"vae done in {vae_info['seconds']:.0f}s: {vae_info}", flush=True)
    else:
        from diffusers import AutoencoderKL

        if not vae_json.exists():
            raise FileNotFoundError(f"stage 'transformer' needs a trained VAE in {out / 'vae'}; run stage 'vae' first")
        pipe.vae = AutoencoderKL.from_pretrained(out / "vae").eval()
        vae_info = json.loads(vae_json.read_text())
    if "transformer" not in stages:
        csv.close()
        return pipe
    t_vae = vae_info["seconds"]
    t0 = time.time()
    train_transformer(pipe, steps=steps, batch=batch, seed=seed, lr=lr, size=size, msl=model.MAX_SEQUENCE_LENGTH,
                      text_fraction=text_fraction, cfg_drop=cfg_drop, log=log)
    t_tr = time.time() - t0
    csv.close()
    pipe.save_pretrained(out)
    info = {
        "seed": seed, "vae_steps": vae_steps, "steps": steps, "batch": batch, "vae_batch": vae_batch, "lr": lr,
        "vae_lr": vae_lr, "text_fraction": text_fraction, "cfg_drop": cfg_drop, "resolution": size,
        "threads": threads, "vae_seconds": round(t_vae, 1), "transformer_seconds": round(t_tr, 1),
        "vae": vae_info, "max_sequence_length": model.MAX_SEQUENCE_LENGTH,
        "torch": torch.__version__,
    }
    (out / "pretrain.json").write_text(json.dumps(info, indent=2) + "\n")
    if "vae" not in stages:  # append the transformer phase to the VAE stage's log
        with open(out / "loss.csv", "a") as f:
            f.writelines(csv_path.read_text().splitlines(keepends=True)[1:])
        csv_path.unlink()
    try:
        plot_loss(out / "loss.csv", out / "loss.png")
    except Exception as e:  # plotting is a nicety; the weights are what matters
        print(f"loss plot failed: {e}", file=sys.stderr)
    if not quiet:
        print(f"saved {out} (vae {t_vae:.0f}s, transformer {t_tr:.0f}s)", flush=True)
    return pipe


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m marble_world.pretrain", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stage", choices=("all", "vae", "transformer"), default="all",
                    help="train both (default), only the VAE, or only the transformer on the VAE in --out")
    a = ap.parse_args(argv)
    stages = ("vae", "transformer") if a.stage == "all" else (a.stage,)
    pretrain(a.out, seed=a.seed, vae_steps=a.vae_steps, steps=a.steps, batch=a.batch, lr=a.lr, threads=a.threads,
             stages=stages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
