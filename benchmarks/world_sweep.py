"""Variants x seeds of one config, trained in parallel processes, summarized like ``marble compare``.

The research sweep behind the demo world's numbers (issue 6). Each variant is a label and a list of
``key=value`` overrides; every (variant, seed) is one ``marble train`` process. The table is
``marble compare``'s: final eval score per reward (mean over seeds, 95% t-interval) and the
worst-reward gain over the base model.

    python benchmarks/world_sweep.py configs/world_marble.yaml --seeds 0,1,2,3,4,5 --jobs 12 \\
        --variant "ws=@configs/world_weighted_sum.yaml" --variant "marble=" --variant "lr3=train.lr=3e-4" \
        --out sweep/

A variant's first word ``@PATH`` trains that config file instead of the positional one.

Every run is validated before any trains. Runs whose ``lora/`` folder exists are reused and runs
with a checkpoint resume, so an interrupted sweep continues where it stopped. The runs go through
``marble.compare.run_parallel`` (logs in OUT/<run>.log, configs in OUT/configs/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_variant(text: str) -> tuple[str, list[str]]:
    label, _, rest = text.partition("=")
    if not label or any(c in label for c in " /"):
        raise SystemExit(f"--variant {text!r}: expected 'LABEL=key=value key=value ...'")
    return label, rest.split()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--variant", action="append", required=True, help="LABEL=key=value key=value ...")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=1, help="processes at once")
    ap.add_argument("--out", required=True)
    ap.add_argument("--common", default="", help="overrides applied to every run (space-separated)")
    ap.add_argument("--timeout", type=float, default=None, help="stop launching new runs after this many seconds")
    a = ap.parse_args(argv)
    from marble.checkpoint import list_checkpoints
    from marble.compare import format_table, run_parallel, summarize
    from marble.config import load_config, validate_components
    from marble.errors import MarbleError

    start = time.time()
    variants = [parse_variant(v) for v in a.variant]
    seeds = [int(s) for s in a.seeds.split(",") if s]
    os.makedirs(a.out, exist_ok=True)
    todo, plan = [], {}
    for seed in seeds:  # seed-major: an early stop still leaves every variant with the same seeds
        for label, ov in variants:
            run_dir = os.path.join(a.out, f"{label}-seed{seed}")
            plan.setdefault(label, {})[seed] = run_dir
            if os.path.isdir(os.path.join(run_dir, "lora")):  # written last: the run is complete
                continue
            config = a.config
            if ov and ov[0].startswith("@"):
                config, ov = ov[0][1:], ov[1:]
            cfg = load_config(config, [*a.common.split(), *ov, f"train.seed={seed}", f"output_dir={run_dir}"])
            validate_components(cfg)  # every run is checked before any trains
            if list_checkpoints(run_dir):
                cfg.resume = run_dir
            todo.append(cfg)
    failed = False
    try:
        run_parallel(todo, a.jobs, a.out, launch_until=None if a.timeout is None else start + a.timeout)
    except MarbleError as exc:  # summarize the runs that did finish
        print(exc, file=sys.stderr)
        failed = True
    print(f"[sweep] {time.time() - start:.0f} s", file=sys.stderr)
    cfg = load_config(a.config, a.common.split())
    names = [r.name for r in cfg.rewards] + [r.name for r in cfg.eval_rewards]
    done = {lab: {s: d for s, d in runs.items() if os.path.isdir(os.path.join(d, "lora"))} for lab, runs in plan.items()}
    done = {lab: runs for lab, runs in done.items() if runs}
    summary = summarize(done, names)
    text = format_table(summary, names)
    counts = ", ".join(f"{lab}: {len(r)}" for lab, r in done.items())
    print(f"seeds finished per variant: {counts}\n{text}")
    with open(os.path.join(a.out, "sweep.md"), "w") as f:
        f.write(f"seeds finished per variant: {counts}\n\n{text}\n")
    with open(os.path.join(a.out, "sweep.json"), "w") as f:
        json.dump({"variants": dict(variants), "runs": done, **summary}, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
