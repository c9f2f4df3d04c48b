"""How much of each reward's gradient is the NFT loss's own (t, eps) draw?

Rolls out one batch with a config's backbone and rewards, then computes every reward's gradient
(K backward passes, as a MARBLE refresh does) several times on the SAME images and advantages,
each time with a fresh draw of training timesteps and noise, under ``train.loss_noise=sample``
(one draw per sample, the papers') and ``group`` (one draw per prompt group). It prints, per
reward, the mean cosine between two draws' gradients: near 0 means the gradient is mostly the
draw's noise, 1 means the draw does not matter. No training happens.

    python benchmarks/gradient_noise.py configs/world_marble.yaml train.prompts_per_iteration=4
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", help="key=value overrides")
    ap.add_argument("--draws", type=int, default=3, help="independent (t, eps) draws per mode (>= 2)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.draws < 2:
        ap.error("--draws must be >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = tempfile.mkdtemp(prefix="marble-gradnoise-")  # the trainer wants a run folder; nothing is kept
    try:
        return _measure(args, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _measure(args, out) -> int:
    from marble.config import load_config
    from marble.trainer import TrainBatch, Trainer, draw_loss_noise

    cfg = load_config(args.config, list(args.overrides) + [f"output_dir={os.path.join(out, 'run')}",
                                                          "train.progress=false", "train.tensorboard=false"])
    tr = Trainer(cfg)
    latents, cond, timesteps, groups, scores, masks, _ = tr.rollout(0)
    r, valid, _ = tr.advantages(scores, masks, groups)
    n, s = groups.shape[0], timesteps.shape[0]
    t = cfg.train.timesteps_per_sample or s
    n_groups = int(groups.max()) + 1
    print(f"{n} images ({n_groups} prompts x {cfg.train.group_size}), T = {t} timesteps per sample, "
          f"{args.draws} draws per mode")
    header = f"{'reward':24s} {'sample: cos':>12s} {'|g|':>8s} {'group: cos':>12s} {'|g|':>8s}"
    results = {}
    for mode in ("sample", "group"):
        grads = []
        for d in range(args.draws):
            t_index, ids = draw_loss_noise(mode, groups, s, t, torch.Generator().manual_seed(1000 + d))
            batch = TrainBatch(latents, cond, r, valid, t_index, timesteps, noise_seed=1000 + d, sample_ids=ids)
            g, _, _ = tr.gradients(batch, None)
            grads.append(g.double().cpu())
        results[mode] = grads
    print(header)
    for k, name in enumerate(tr.reward_names):
        row = f"{name:24s}"
        for mode in ("sample", "group"):
            gs = results[mode]
            cos = [float(torch.nn.functional.cosine_similarity(gs[a][k], gs[b][k], dim=0))
                   for a, b in itertools.combinations(range(len(gs)), 2)]
            norm = sum(float(x[k].norm()) for x in gs) / len(gs)
            row += f" {sum(cos) / len(cos):+12.3f} {norm:8.4f}"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
