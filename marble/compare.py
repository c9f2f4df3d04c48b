"""``marble compare``: several balancers x several seeds on one config, one table.

Each (balancer, seed) trains with the same config, budget and prompts; the table shows, for every
reward, the base model's score, each balancer's final score (mean over seeds with a 95%
confidence interval) and the worst-reward improvement over the base, and for every balancer after
the first, its worst-reward gain minus the first balancer's, paired by seed (the same seed shares
the eval prompts and noise and the starting LoRA, so this difference is the sharper test).

The "final score" of a run is its last evaluation (``eval/<name>/mean``: fixed held-out prompts,
fixed noise) when the config evaluates, else the mean training reward over the last quarter of
iterations. The base score is the evaluation before training (iteration 0).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

# two-sided 95% Student t quantiles, by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    if df in _T95:
        return _T95[df]
    keys = sorted(_T95)
    return next((_T95[k] for k in keys if k >= df), 1.96)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% interval (nan with one value)."""
    vals = [v for v in values if v == v]
    if not vals:
        return float("nan"), float("nan")
    m = statistics.fmean(vals)
    if len(vals) < 2:
        return m, float("nan")
    return m, t95(len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals))


def read_metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def final_scores(lines: list[dict], names: list[str]) -> tuple[dict, dict]:
    """(base, final) per reward from one run's metrics."""
    evals = [m for m in lines if any(f"eval/{n}/mean" in m for n in names)]
    if evals:
        base = {n: evals[0].get(f"eval/{n}/mean", float("nan")) for n in names} if evals[0]["iteration"] == 0 else {}
        last = evals[-1]
        return base, {n: last.get(f"eval/{n}/mean", float("nan")) for n in names}
    train = [m for m in lines if any(f"reward/{n}/mean" in m for n in names)]
    tail = train[-max(1, len(train) // 4):]
    head = train[:max(1, len(train) // 4)]
    fin = {n: statistics.fmean(m[f"reward/{n}/mean"] for m in tail if m.get(f"reward/{n}/mean") == m.get(f"reward/{n}/mean")) for n in names}
    base = {n: statistics.fmean(m[f"reward/{n}/mean"] for m in head if m.get(f"reward/{n}/mean") == m.get(f"reward/{n}/mean")) for n in names}
    return base, fin


def summarize(runs: dict[str, dict[int, str]], names: list[str]) -> dict:
    """runs: balancer -> seed -> run folder. Returns the table data."""
    # The base model's eval depends on the seed (its eval noise), not on the balancer: one value
    # per seed, so that the interval counts seeds, not runs.
    base_by_seed: dict[int, dict[str, float]] = {}
    table: dict[str, dict] = {}
    worst_by_seed: dict[str, dict[int, float]] = {}
    for bal, seeds in runs.items():
        finals = {n: [] for n in names}
        worst = []
        for seed, run in sorted(seeds.items()):
            base, fin = final_scores(read_metrics(run), names)
            for n in names:
                finals[n].append(fin[n])
            if base:
                base_by_seed.setdefault(seed, base)
                worst.append(min(fin[n] - base[n] for n in names))
                worst_by_seed.setdefault(bal, {})[seed] = worst[-1]
        table[bal] = {"final": {n: mean_ci(finals[n]) for n in names}, "worst_gain": mean_ci(worst),
                      "per_seed": finals}
    # Paired by seed against the first balancer: the same seed gives both runs the same eval
    # prompts and noise and the same starting LoRA, so the per-seed difference is the sharper test.
    bals = list(runs)
    for bal in bals[1:]:
        ref = worst_by_seed.get(bals[0], {})
        diffs = [w - ref[s] for s, w in sorted(worst_by_seed.get(bal, {}).items()) if s in ref]
        table[bal]["worst_gain_vs_first"] = mean_ci(diffs)
    base_vals = {n: [b[n] for _, b in sorted(base_by_seed.items())] for n in names}
    return {"base": {n: mean_ci(base_vals[n]) for n in names}, "balancers": table}


def format_table(summary: dict, names: list[str]) -> str:
    bals = list(summary["balancers"])
    head = ["reward", "base"] + bals
    rows = []

    def fmt(mc):
        m, ci = mc
        return f"{m:.4g}" if ci != ci else f"{m:.4g} ± {ci:.2g}"

    for n in names:
        rows.append([n, fmt(summary["base"][n])] + [fmt(summary["balancers"][b]["final"][n]) for b in bals])
    rows.append(["worst-reward gain", ""] + [fmt(summary["balancers"][b]["worst_gain"]) for b in bals])
    if len(bals) > 1:
        rows.append([f"worst gain - {bals[0]}'s (paired)", "", ""]
                    + [fmt(summary["balancers"][b].get("worst_gain_vs_first", (float("nan"),) * 2)) for b in bals[1:]])
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from marble.config import load_config, validate_components

    balancers = [b for b in args.balancers.split(",") if b]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    base_cfg = load_config(args.config, list(args.overrides))
    names = [r.name for r in base_cfg.rewards] + [r.name for r in base_cfg.eval_rewards]
    out = args.out or os.path.join(base_cfg.output_dir + "-compare")
    plan: dict[str, dict[int, str]] = {}
    configs = []
    for bal in balancers:  # validate everything before training anything
        for seed in seeds:
            run_dir = os.path.join(out, f"{bal}-seed{seed}")
            ov = list(args.overrides) + [f"balancer.name={bal}", f"train.seed={seed}", f"output_dir={run_dir}"]
            cfg = load_config(args.config, ov)
            if bal != base_cfg.balancer.name:
                cfg.balancer.args = {}  # the config's args belong to its own balancer: use defaults
            validate_components(cfg)
            configs.append(cfg)
            plan.setdefault(bal, {})[seed] = run_dir
    from marble.checkpoint import list_checkpoints
    from marble.cli import _quiet_libraries
    from marble.trainer import Trainer

    _quiet_libraries(args.debug)
    todo = []
    for cfg in configs:
        if os.path.isdir(os.path.join(cfg.output_dir, "lora")):  # written last: the run is complete
            print(f"[compare] {cfg.output_dir} is complete, reusing it", file=sys.stderr)
            continue
        if list_checkpoints(cfg.output_dir):
            cfg.resume = cfg.output_dir
        todo.append(cfg)
    if args.jobs > 1 and len(todo) > 1:
        run_parallel(todo, args.jobs, out)
    else:
        for cfg in todo:
            print(f"[compare] {cfg.balancer.name} seed {cfg.train.seed} -> {cfg.output_dir}", file=sys.stderr)
            Trainer(cfg).train()
    summary = summarize(plan, names)
    text = format_table(summary, names)
    print(text)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "compare.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "compare.json"), "w", encoding="utf-8") as f:
        json.dump({"runs": plan, **summary}, f, indent=2)
    return 0


def _iterations_done(run_dir: str) -> int:
    try:
        with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
            return sum(1 for line in f if '"step"' in line)
    except OSError:
        return 0


def run_parallel(configs: list, jobs: int, out: str, launch_until: float | None = None) -> None:
    """Train ``configs`` as ``jobs`` separate ``marble train`` processes at a time, one CPU thread
    each unless OMP_NUM_THREADS says otherwise. Each run logs to OUT/<run>.log; a progress bar
    per run (on a terminal, or with MARBLE_PROGRESS=1) follows its metrics.jsonl. Plugins must be
    installed (entry points): the processes do not see plugins registered only in this one. An
    interrupt (Ctrl-C, SIGTERM) stops the runs still going; their checkpoints let a rerun resume.
    ``launch_until`` (a ``time.time()``): start no run after it, finish the ones started. Raises
    MarbleError naming every failed run (with its log's tail) once all have ended."""
    import signal
    import subprocess
    import threading
    import time

    from omegaconf import OmegaConf

    from marble.distributed import stop_process
    from marble.errors import MarbleError

    cfg_dir = os.path.join(out, "configs")
    os.makedirs(cfg_dir, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    pending, running, failed, bars = list(configs), [], [], {}
    progress = sys.stderr.isatty() or os.environ.get("MARBLE_PROGRESS") == "1"

    def _stop(signum, frame):  # SIGTERM as Ctrl-C: stop the runs below too, not only this process
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, _stop) if threading.current_thread() is threading.main_thread() else None
    try:
        while pending or running:
            if launch_until is not None and time.time() >= launch_until:
                pending.clear()
            while pending and len(running) < jobs:
                cfg = pending.pop(0)
                name = os.path.basename(os.path.normpath(cfg.output_dir))
                path = os.path.join(cfg_dir, f"{name}.yaml")
                OmegaConf.save(OmegaConf.structured(cfg), path)
                os.makedirs(cfg.output_dir, exist_ok=True)
                log_path = os.path.join(out, f"{name}.log")
                log = open(log_path, "w", encoding="utf-8")
                cmd = [sys.executable, "-m", "marble.cli", "train", path, "train.progress=false"]
                print(f"[compare] {cfg.balancer.name} seed {cfg.train.seed} -> {cfg.output_dir} (log {log_path})",
                      file=sys.stderr)
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                running.append((cfg, log_path, log, proc))
                if progress and cfg.train.progress:
                    from tqdm.auto import tqdm

                    bars[cfg.output_dir] = tqdm(total=cfg.train.iterations, desc=name, position=len(bars),
                                                unit="it", dynamic_ncols=True, file=sys.stderr)
            time.sleep(0.5)
            for item in list(running):
                cfg, log_path, log, proc = item
                done = proc.poll() is not None
                bar = bars.get(cfg.output_dir)
                if bar is not None:  # one metrics line per finished training iteration (they carry "step")
                    bar.update(_iterations_done(cfg.output_dir) - bar.n)
                if not done:
                    continue
                running.remove(item)
                log.close()
                if proc.returncode != 0:
                    with open(log_path, encoding="utf-8") as f:
                        tail = "".join(f.readlines()[-20:])
                    failed.append(f"{cfg.output_dir} (exit {proc.returncode}, log {log_path}):\n{tail}")
    finally:
        for _, _, log, proc in running:  # only left here when interrupted
            stop_process(proc)
            log.close()
        for bar in bars.values():
            bar.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    if failed:
        raise MarbleError("compare: runs failed:\n" + "\n".join(failed))


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="several balancers x seeds on one config: a table with 95% intervals",
                       description=__doc__)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    p.add_argument("--balancers", default="weighted_sum,marble", help="comma-separated balancer names")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--out", default=None, help="folder for the runs and the table (default OUTPUT_DIR-compare)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, each its own process with one CPU thread (OMP_NUM_THREADS to "
                        "change); needs the plugins installed, not only registered in-process (default 1)")
    p.set_defaults(func=run)
