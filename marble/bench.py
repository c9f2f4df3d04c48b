"""``marble bench``: time the rollout, the DiffusionNFT micro-step and whole training iterations.

Builds the SD3.5-Medium transformer from its config with random weights (cost does not depend on
weight values) inside the project's own ``sd3`` backbone class (``RandomSD3Backbone``: no text
encoders, random prompt embeddings of the real shapes 333 x 4096 and 2048), and times it with the
project's own trainer code: ``backbone.sample`` for the rollout, ``Trainer.optimizer_step``
(= ``Trainer.gradients`` + balance + clip + AdamW) for the micro-step, ``Trainer.train_iteration``
for whole iterations with ``weighted_sum``, ``marble`` (K rewards, refresh every N) and
``marble_full``, all on one backbone in one process. K cheap dependency-free rewards score the
images. Every timing is a median of repeats after a warm-up, with the device synchronized before
each clock read; ratios are against ``weighted_sum`` from the same run.

Reports peak memory (``torch.cuda.max_memory_allocated``; on the CPU the process's peak resident
set), achieved TFLOP/s (FLOPs from ``torch.utils.flop_counter.FlopCounterMode`` on one forward and
one forward+backward, times the number of passes) and the percentage of the matmul peak measured
in the same run (a large bf16 matmul on CUDA). Prints a short table last; ``--json`` writes all
numbers. See docs/PERFORMANCE.md for the goals. On the CPU only ratios mean anything.

    marble bench                         # SD3.5-M size on the GPU, compiled (about 5-8 minutes)
    marble bench --tiny --device cpu     # the same code on a tiny transformer (seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

from marble.errors import MarbleError
from marble.hookspecs import hookimpl

BALANCERS = ("weighted_sum", "marble", "marble_full")
BACKBONE_NAME = "bench-sd3-random"


# ------------------------------------------------------------------------------ rewards
def _reward_fns():
    """Cheap, dependency-free image statistics (images N x 3 x H x W in [0, 1])."""

    def red(x):
        return (x[:, 0] - 0.5 * (x[:, 1] + x[:, 2])).mean(dim=(1, 2))

    def green(x):
        return (x[:, 1] - 0.5 * (x[:, 0] + x[:, 2])).mean(dim=(1, 2))

    def blue(x):
        return (x[:, 2] - 0.5 * (x[:, 0] + x[:, 1])).mean(dim=(1, 2))

    def brightness(x):
        return x.mean(dim=(1, 2, 3))

    def contrast(x):
        return x.flatten(1).std(dim=1)

    def smoothness(x):
        return -(x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))

    def saturation(x):
        return (x.max(dim=1).values - x.min(dim=1).values).mean(dim=(1, 2))

    def center(x):
        h, w = x.shape[-2:]
        return x[..., h // 4: h - h // 4, w // 4: w - w // 4].mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))

    return [red, green, blue, brightness, contrast, smoothness, saturation, center]


class _StatReward:
    def __init__(self, fn):
        self.fn = fn

    def score(self, images, prompts, metadata):
        from marble import RewardOutput

        return RewardOutput(self.fn(images.float()))


def _reward_names(k: int) -> list[str]:
    return [f"bench_{fn.__name__}" for fn in _reward_fns()[:k]]


class _BenchPlugin:
    """Registers the K bench rewards and the random-weights SD3 backbone (for config validation)."""

    def __init__(self, k: int):
        self.k = k

    @hookimpl
    def marble_register_rewards(self):
        from marble import RewardSpec

        return [RewardSpec(f"bench_{fn.__name__}", (lambda fn=fn: _StatReward(fn)),
                           description=f"bench: {fn.__name__} of the image") for fn in _reward_fns()[: self.k]]

    @hookimpl
    def marble_register_backbones(self):
        from marble import BackboneSpec
        from marble_diffusers.random_sd3 import RandomSD3Args

        return [BackboneSpec(BACKBONE_NAME, "marble_diffusers.random_sd3:RandomSD3Backbone", RandomSD3Args,
                             description="bench: the sd3 backbone on a random transformer (medium or tiny)")]


def _plugin(k: int):
    return _BenchPlugin(k)


# ------------------------------------------------------------------------------ measuring
class Clock:
    """Synchronizing timer and per-phase peak memory for one device."""

    def __init__(self, device):
        import torch

        self.torch = torch
        self.device = device
        self.cuda = device.type == "cuda"
        self.memory_kind = "cuda_max_memory_allocated" if self.cuda else "cpu_peak_rss"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out

    def reset_peak(self) -> None:
        if self.cuda:
            self.sync()
            self.torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # Linux: "5" resets the peak resident set size (VmHWM) of this process
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def peak_gb(self) -> float:
        if self.cuda:
            return self.torch.cuda.max_memory_allocated(self.device) / 1e9
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024 / 1e9
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _eager():
    """Run compiled regions eagerly (FLOP counting, the eager baseline)."""
    import torch

    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if stance is not None else contextlib.nullcontext()


def matmul_peak(clock: Clock, dtype, n: int, reps: int = 5, inner: int = 8) -> float:
    """Dense matmul throughput of this device (FLOP/s): median over ``reps`` of ``inner`` n^3 matmuls."""
    torch = clock.torch
    g = torch.Generator(device=clock.device).manual_seed(0)
    a = torch.randn(n, n, device=clock.device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=clock.device, dtype=dtype, generator=g)

    def work():
        for _ in range(inner):
            torch.mm(a, b)

    work()
    times = [clock.time(work)[0] for _ in range(reps)]
    return 2.0 * n ** 3 * inner / _median(times)


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with _eager():
        with FlopCounterMode(display=False) as fc:
            fn()
    return int(fc.get_total_flops())


# ------------------------------------------------------------------------------ the run
def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="benchmark rollout, micro-step and whole iterations (SD3.5-M size, random weights)",
        description=__doc__.split("\n\n")[0] + " Prints a short table last; --json writes every number.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    p.add_argument("--tiny", action="store_true", help="a tiny random transformer instead of SD3.5-M (CI, CPU)")
    p.add_argument("--json", dest="json_out", metavar="OUT", default=None, help="write the results to this file")
    p.add_argument("--steps", default="10,25", help="ODE steps of the timed rollouts (the first is also the "
                   "iterations' sampler steps); default 10,25")
    p.add_argument("--group", type=int, default=24, help="images per prompt (one group per iteration); default 24")
    p.add_argument("--micro-batch", type=int, default=8, help="micro-batch of sampling and training; default 8")
    p.add_argument("--k", type=int, default=5, help="number of rewards (1-8); default 5")
    p.add_argument("--refresh-every", type=int, default=10, help="MARBLE refresh period N; default 10")
    p.add_argument("--compile", dest="compile", action=argparse.BooleanOptionalAction, default=None,
                   help="regional compilation (default: on with CUDA); --no-compile: the eager fallback")
    p.add_argument("--iterations", type=int, default=None,
                   help="timed marble iterations (default: --refresh-every, one refresh cycle); weighted_sum "
                        "times min(N, 5), marble_full min(N, 3), after one warm-up iteration each")
    p.add_argument("--train-timesteps", type=int, default=2, help="training timesteps per sample (T); default 2")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of the rollout and micro-step; default 3")
    p.add_argument("--resolution", type=int, default=None, help="pixels (default 512; tiny 64)")
    p.add_argument("--lora-rank", type=int, default=None, help="LoRA rank (default 32, alpha 2 x rank; tiny 4)")
    p.add_argument("--with-vae", action="store_true", help="decode with a random VAE of the real config")
    p.add_argument("--eager-baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="when compiled, also time the rollout and micro-step eagerly in the same run")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
    return p


def _options(args) -> dict:
    try:
        steps = [int(s) for s in str(args.steps).split(",") if s.strip()]
    except ValueError:
        raise MarbleError(f"--steps must be comma-separated integers such as 10,25, got {args.steps!r}") from None
    if not steps or min(steps) < 1:
        raise MarbleError(f"--steps needs at least one positive integer, got {args.steps!r}")
    if not 1 <= args.k <= len(_reward_fns()):
        raise MarbleError(f"--k must be in 1..{len(_reward_fns())}, got {args.k}")
    for name in ("group", "micro_batch", "refresh_every", "train_timesteps", "repeats"):
        if getattr(args, name) < 1:
            raise MarbleError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.train_timesteps > steps[0]:
        raise MarbleError(f"--train-timesteps ({args.train_timesteps}) must be <= the first --steps ({steps[0]})")
    iterations = args.iterations if args.iterations is not None else args.refresh_every
    if iterations < 1:
        raise MarbleError(f"--iterations must be >= 1, got {iterations}")
    return {"steps": steps, "iterations": iterations}


def _device(name):
    import torch

    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MarbleError("--device cuda: no CUDA device is available to torch "
                          f"(torch {torch.__version__}); use --device cpu (only ratios are meaningful there)")
    return torch.device(name, 0) if name == "cuda" else torch.device("cpu")


def run(args) -> int:
    opts = _options(args)
    try:
        import marble_diffusers  # noqa: F401
    except ImportError:
        raise MarbleError("marble bench needs the diffusers backbone plugin (plugins/diffusers: "
                          "pip install -e plugins/diffusers)") from None
    from marble.testing import register_plugin

    t_start = time.perf_counter()
    device = _device(args.device)
    with register_plugin(_plugin(args.k), name="marble-bench", distribution="marble-rl (bench)"):
        result = _bench(args, opts, device)
    result["total_s"] = time.perf_counter() - t_start
    if args.json_out:
        d = os.path.dirname(os.path.abspath(args.json_out))
        os.makedirs(d, exist_ok=True)
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    print(format_table(result))
    return 0


def _bench(args, opts, device) -> dict:
    import torch

    from marble import __version__
    from marble.config import load_config
    from marble.trainer import Trainer, TrainBatch
    from marble_diffusers.fast import compile_counters
    from marble_diffusers.random_sd3 import RandomSD3Args, RandomSD3Backbone

    clock = Clock(device)
    size = "tiny" if args.tiny else "medium"
    res = args.resolution or (64 if args.tiny else 512)
    rank = args.lora_rank or (4 if args.tiny else 32)
    compile_arg = "auto" if args.compile is None else ("true" if args.compile else "false")
    steps, S = opts["steps"], opts["steps"][0]
    G, mb, K, T = args.group, args.micro_batch, args.k, args.train_timesteps
    log = _Log()

    # ---- the backbone (one for every phase and balancer)
    bargs = {"size": size, "device": str(device), "resolution": res, "lora_rank": rank,
             "lora_alpha": float(2 * rank), "compile": compile_arg, "with_vae": bool(args.with_vae),
             "seed": int(args.seed)}
    log(f"building the {size} transformer (random weights) on {device} ...")
    build_s, bb = clock.time(lambda: RandomSD3Backbone(RandomSD3Args(**bargs)))
    dtype_name = str(bb.dtype).replace("torch.", "")
    n_params = sum(p.numel() for p in bb.transformer.parameters())
    n_lora = sum(p.numel() for p in bb.trainable_parameters())
    latent = res // bb.vae_scale_factor
    result: dict = {
        "schema": 1,
        "marble": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": {"type": device.type, "name": _device_name(device), "dtype": dtype_name},
        "model": {"size": size, "transformer_params": n_params, "lora_params": n_lora, "lora_rank": rank,
                  "layers": bb.transformer.config.num_layers, "resolution": res,
                  "image_tokens": (latent // bb._latent_patch()) ** 2, "text_tokens": bb.text_tokens,
                  "vae": "random" if args.with_vae else "latent preview", "build_s": build_s},
        "config": {"steps": steps, "group": G, "micro_batch": mb, "k": K, "refresh_every": args.refresh_every,
                   "train_timesteps": T, "iterations": opts["iterations"], "repeats": args.repeats,
                   "compile": bool(bb.compiled), "seed": args.seed, "kl_coef": 1e-4, "beta": 0.1,
                   "optimizer_steps_per_iteration": 1, "prompts_per_iteration": 1},
    }

    # ---- the device's matmul peak, measured in this run
    n = 8192 if device.type == "cuda" else (512 if args.tiny else 2048)
    log("measuring the dense matmul peak ...")
    peak = matmul_peak(clock, bb.dtype, n)
    result["device"].update({"peak_tflops": peak / 1e12, "peak_matmul": {"n": n, "dtype": dtype_name}})

    # ---- FLOPs of one forward / forward+backward, per sample (eager, counted by FlopCounterMode)
    cond_all = bb.encode_prompts(["a bench prompt"] * max(G, mb))
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(bb._noise_shape(mb), generator=gen).to(device, bb.state_dtype)
    tt = torch.rand(mb, generator=gen).to(device, bb.state_dtype)
    cond_mb = {k: v[:mb] for k, v in cond_all.items()}

    def fwd():
        with torch.no_grad():
            bb.velocity(x, tt, cond_mb, "old")

    def fwd_bwd():
        bb.velocity(x, tt, cond_mb, "trained").float().square().mean().backward()

    f_fwd = count_flops(fwd) / mb
    f_fb = count_flops(fwd_bwd) / mb
    for p in bb.trainable_parameters():
        p.grad = None
    f_bwd = max(f_fb - f_fwd, 0.0)
    result["flops"] = {"forward_per_sample_tflop": f_fwd / 1e12, "backward_per_sample_tflop": f_bwd / 1e12,
                       "counter": "torch.utils.flop_counter.FlopCounterMode"}

    def rate(flop: float, seconds: float) -> dict:
        tf = flop / seconds / 1e12
        return {"tflop": flop / 1e12, "tflops": tf, "pct_peak": 100.0 * tf * 1e12 / peak}

    # ---- trainers (project code), sharing the backbone
    tmp = tempfile.mkdtemp(prefix="marble-bench-")
    names = _reward_names(K)
    trainers = {b: _trainer(load_config, Trainer, bb, b, names, bargs, args, opts, tmp, G, mb, T) for b in BALANCERS}

    def rollout(n_steps: int):
        g = torch.Generator().manual_seed(args.seed + 1)
        out = []
        for lo in range(0, G, mb):  # chunks of the micro-batch, as Trainer.rollout samples
            out.append(bb.sample({k: v[lo:lo + mb] for k, v in cond_all.items()}, num_steps=n_steps,
                                 generator=g, adapter="old"))
        return out

    # ---- rollouts
    compile_info: dict = {"enabled": bool(bb.compiled), "blocks": int(getattr(bb, "compiled_blocks", 0))}
    result["rollout"] = {}
    for i, n_steps in enumerate(steps):
        log(f"rollout: {n_steps} steps, group {G} in chunks of {mb} ...")
        first, ro = clock.time(lambda: rollout(n_steps))
        if i == 0:
            compile_info["first_rollout_s"] = first
        clock.reset_peak()
        times = [clock.time(lambda: rollout(n_steps))[0] for _ in range(args.repeats)]
        med = _median(times)
        result["rollout"][str(n_steps)] = {"group": G, "batch": mb, "median_s": med, "times_s": times,
                                           "peak_memory_gb": clock.peak_gb(),
                                           **rate(n_steps * G * f_fwd, med)}

    # ---- the micro-step: one optimizer step over one micro-batch and one timestep (T = 1)
    latents = torch.cat([r.latents for r in ro])
    timesteps = ro[0].timesteps

    def batch_for(trainer, n: int, seed: int) -> TrainBatch:
        g = torch.Generator().manual_seed(seed)
        scores = torch.randn(n, K, generator=g, dtype=torch.float64)
        masks = torch.ones(n, K, dtype=torch.bool)
        r, valid, _ = trainer.advantages(scores, masks, torch.zeros(n, dtype=torch.long))
        t_index = torch.randint(0, timesteps.shape[0], (n, 1), generator=g)
        return TrainBatch(latents[:n], {k: v[:n] for k, v in cond_all.items()}, r, valid, t_index, timesteps,
                          noise_seed=seed)

    def micro(trainer, batch, reps: int) -> list[float]:
        return [clock.time(lambda: trainer.optimizer_step(batch))[0] for _ in range(reps)]

    log("micro-step (old + ref + trained forward, backward, clip, AdamW) ...")
    ws = trainers["weighted_sum"]
    b_ws = batch_for(ws, mb, args.seed + 2)
    compile_info["first_micro_step_s"] = micro(ws, b_ws, 1)[0]
    clock.reset_peak()
    times = micro(ws, b_ws, max(args.repeats, 3))
    step_flop = mb * (2 * f_fwd + f_fwd + f_bwd)  # old + ref (no grad) + trained forward and backward
    result["micro_step"] = {"batch": mb, "median_s": _median(times), "times_s": times,
                            "peak_memory_gb": clock.peak_gb(), **rate(step_flop, _median(times))}

    log(f"micro-step with a MARBLE refresh ({K} per-reward backward passes + the KL one) ...")
    full = trainers["marble_full"]
    b_full = batch_for(full, mb, args.seed + 3)
    micro(full, b_full, 1)
    clock.reset_peak()
    times = micro(full, b_full, max(args.repeats, 2))
    refresh_flop = mb * (3 * f_fwd + (K + 1) * f_bwd)
    result["micro_step_refresh"] = {"batch": mb, "median_s": _median(times), "times_s": times,
                                    "peak_memory_gb": clock.peak_gb(), **rate(refresh_flop, _median(times))}
    warm_counters = compile_counters()

    # ---- the QP and its bookkeeping (Marble.combine on K gradients of the LoRA's size)
    from marble.balancers.args import MarbleArgs
    from marble.balancers.marble import Marble

    bal = Marble(MarbleArgs())
    bal.setup(names, [1.0] * K)
    grads = torch.randn(K, n_lora, device=device, dtype=bb.trainable_parameters()[0].dtype,
                        generator=torch.Generator(device=device).manual_seed(args.seed))
    bal.combine(grads, 0)  # builds the parametrized QP once
    qp_times = [clock.time(lambda: bal.combine(grads, 1))[0] for _ in range(5)]
    qp_med = _median(qp_times)
    result["qp"] = {"combine_median_ms": 1000 * qp_med, "pct_of_micro_step": 100 * qp_med / result["micro_step"]["median_s"],
                    "what": "Marble.combine: Gram of K normalized gradients, simplex QP (cvxpy), direction, diagnostics"}
    del grads

    # ---- the eager baseline in the same process (compiled runs only)
    if bb.compiled and args.eager_baseline:
        log("eager baseline (the same code with the compiled blocks run eagerly) ...")
        with _eager():
            clock.time(lambda: rollout(S))
            e_ro = [clock.time(lambda: rollout(S))[0] for _ in range(2)]
            micro(ws, b_ws, 1)
            e_ms = micro(ws, b_ws, 3)
        result["eager"] = {
            "rollout": {"steps": S, "median_s": _median(e_ro), **rate(S * G * f_fwd, _median(e_ro))},
            "micro_step": {"median_s": _median(e_ms), **rate(step_flop, _median(e_ms))},
            "compiled_speedup": {"rollout": _median(e_ro) / result["rollout"][str(S)]["median_s"],
                                 "micro_step": _median(e_ms) / result["micro_step"]["median_s"]},
        }

    # ---- whole iterations, each balancer on the same backbone
    result["iteration"] = {}
    it_flop_ws = (S * G * f_fwd) + (G * T / mb) * step_flop
    for name in BALANCERS:
        tr = trainers[name]
        n_it = {"weighted_sum": min(opts["iterations"], 5), "marble": opts["iterations"],
                "marble_full": min(opts["iterations"], 3)}[name]
        log(f"iterations: {name} (1 warm-up + {n_it}) ...")
        tr.train_iteration(0)  # warm-up (for marble: step 0, a refresh)
        clock.reset_peak()
        recs = []
        for it in range(1, n_it + 1):
            dt, m = clock.time(lambda: tr.train_iteration(it))
            recs.append({"total_s": dt, "rollout_s": float(m["time/rollout"]), "refresh": bool(m.get("refresh", 0))})
        result["iteration"][name] = _summarize(recs, name, args.refresh_every, clock.peak_gb())
    frames_end = compile_counters()
    it_ws = result["iteration"]["weighted_sum"]
    result["iteration"]["weighted_sum"].update(rate(it_flop_ws, it_ws["time_s"]))
    it_refresh_flop = (S * G * f_fwd) + (G * T / mb) * refresh_flop
    for name in ("marble", "marble_full"):
        r = result["iteration"][name]
        frac = r["refresh_fraction"]
        r.update(rate(frac * it_refresh_flop + (1 - frac) * it_flop_ws, r["time_s"]))

    ratios = {}
    for name in ("marble", "marble_full"):
        r = result["iteration"][name]
        ratios[name] = {"speed_vs_weighted_sum": it_ws["time_s"] / r["time_s"],
                        "train_speed_vs_weighted_sum": it_ws["train_s"] / r["train_s"],
                        "memory_vs_weighted_sum": r["peak_memory_gb"] / it_ws["peak_memory_gb"]}
    result["ratios"] = ratios
    compile_info.update({"counters_after_warmup": warm_counters, "counters_end": frames_end,
                         "recompiles_after_warmup": frames_end["frames"] - warm_counters["frames"],
                         "graph_breaks": frames_end["graph_breaks"]})
    result["compile"] = compile_info
    result["memory_kind"] = clock.memory_kind
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return result


def _trainer(load_config, Trainer, bb, balancer, names, bargs, args, opts, tmp, G, mb, T):
    data = {
        "output_dir": os.path.join(tmp, balancer),
        "backbone": {"name": BACKBONE_NAME, "args": bargs},
        "rewards": [{"name": n, "weight": 1.0} for n in names],
        "balancer": {"name": balancer, "args": {"refresh_every": args.refresh_every} if balancer == "marble" else {}},
        "prompts": [{"texts": [f"bench prompt {i}" for i in range(8)]}],
        "train": {"iterations": opts["iterations"] + 1, "seed": args.seed, "prompts_per_iteration": 1,
                  "group_size": G, "num_steps": opts["steps"][0], "timesteps_per_sample": T, "micro_batch": mb,
                  "optimizer_steps": 1, "beta": 0.1, "kl_coef": 1e-4, "tensorboard": False, "progress": False},
    }
    cfg = load_config(None, data=data)
    rewards = [_StatReward(fn) for fn in _reward_fns()[: len(names)]]
    return Trainer(cfg, backbone=bb, rewards=rewards, eval_rewards=[])


def _summarize(recs: list[dict], name: str, refresh_every: int, peak_gb: float) -> dict:
    """Median per iteration; for marble the cycle time (N - 1) x median(amortized) + median(refresh), / N."""
    tot = [r["total_s"] for r in recs]
    train = [r["total_s"] - r["rollout_s"] for r in recs]
    out: dict = {"iterations": len(recs), "times_s": tot, "peak_memory_gb": peak_gb,
                 "rollout_s": _median([r["rollout_s"] for r in recs])}
    refresh = [i for i, r in enumerate(recs) if r["refresh"]]
    amort = [i for i, r in enumerate(recs) if not r["refresh"]]
    if name == "marble" and refresh and amort:
        n = refresh_every
        cyc = lambda xs: ((n - 1) * _median([xs[i] for i in amort]) + _median([xs[i] for i in refresh])) / n  # noqa: E731
        out.update({"time_s": cyc(tot), "train_s": cyc(train), "refresh_time_s": _median([tot[i] for i in refresh]),
                    "amortized_time_s": _median([tot[i] for i in amort]), "refresh_fraction": 1.0 / n,
                    "how": f"cycle of {n}: (N-1) x median(amortized) + median(refresh), / N"})
    else:
        out.update({"time_s": _median(tot), "train_s": _median(train),
                    "refresh_fraction": (len(refresh) / len(recs)) if recs else 0.0, "how": "median"})
    return out


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


class _Log:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[bench {time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ the table
def format_table(r: dict) -> str:
    d, m, c = r["device"], r["model"], r["config"]
    lines = [f"marble bench: {m['size']} SD3 transformer ({m['transformer_params'] / 1e9:.2f} B params, "
             f"{m['resolution']}px, LoRA r={m['lora_rank']}) on {d['name']} ({d['dtype']}, "
             f"{'compiled' if c['compile'] else 'eager'}); matmul peak {d['peak_tflops']:.1f} TFLOP/s (measured)"]
    hdr = f"{'what':<46} {'batch':>5} {'time s':>9} {'TFLOP/s':>9} {'% peak':>7} {'peak GB':>8}"
    lines += [hdr, "-" * len(hdr)]

    def row(what, batch, e):
        lines.append(f"{what:<46} {batch:>5} {e.get('median_s', e.get('time_s', float('nan'))):>9.4f} "
                     f"{e.get('tflops', float('nan')):>9.3g} {e.get('pct_peak', float('nan')):>6.1f}% "
                     f"{e.get('peak_memory_gb', float('nan')):>8.2f}")

    for s, e in r["rollout"].items():
        row(f"rollout {s} steps, group {e['group']}", e["batch"], e)
    row("micro-step: old+ref+train fwd, bwd, AdamW", r["micro_step"]["batch"], r["micro_step"])
    row(f"micro-step, refresh ({c['k']} per-reward bwd + KL)", r["micro_step_refresh"]["batch"], r["micro_step_refresh"])
    for name, e in r["iteration"].items():
        label = {"weighted_sum": "iteration: weighted_sum",
                 "marble": f"iteration: marble (K={c['k']}, N={c['refresh_every']})",
                 "marble_full": f"iteration: marble_full (K={c['k']})"}[name]
        row(label, c["group"], e)
    ra = r["ratios"]
    lines.append(f"marble vs weighted_sum: speed {ra['marble']['speed_vs_weighted_sum']:.3f}x, training phase "
                 f"{ra['marble']['train_speed_vs_weighted_sum']:.3f}x, peak memory "
                 f"{ra['marble']['memory_vs_weighted_sum']:.3f}x; marble_full speed "
                 f"{ra['marble_full']['speed_vs_weighted_sum']:.3f}x")
    cp = r["compile"]
    extra = ""
    if "eager" in r:
        sp = r["eager"]["compiled_speedup"]
        extra = f"; compiled vs eager: rollout {sp['rollout']:.2f}x, micro-step {sp['micro_step']:.2f}x"
    warm = (f"first rollout {cp.get('first_rollout_s', float('nan')):.1f} s, first micro-step "
            f"{cp.get('first_micro_step_s', float('nan')):.1f} s")
    lines.append(f"warm-up: {warm}; recompiles after warm-up {cp['recompiles_after_warmup']}, graph breaks "
                 f"{cp['graph_breaks']}{extra}")
    lines.append(f"QP + bookkeeping (Marble.combine): {r['qp']['combine_median_ms']:.2f} ms "
                 f"({r['qp']['pct_of_micro_step']:.2f}% of a micro-step); total {r.get('total_s', float('nan')):.0f} s")
    return "\n".join(lines)
