"""The ``marble`` command line.

User errors (bad config, unknown component, missing file) exit with code 2 and a one-paragraph
message; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from marble.errors import MarbleError

EXIT_USER = 2


def _host():
    from marble.host import get_host

    return get_host()


# ---------------------------------------------------------------- plugins / listings
def cmd_plugins(args: argparse.Namespace) -> int:
    host = _host()
    if args.json:
        print(json.dumps({
            "plugins": [
                {"name": p.name, "distribution": p.distribution, "version": p.version, "module": p.module,
                 "status": p.status, "error": p.error, "rewards": p.rewards, "backbones": p.backbones,
                 "balancers": p.balancers,
                 "components": {"rewards": p.rewards, "backbones": p.backbones, "balancers": p.balancers}}
                for p in host.plugins
            ],
            "conflicts": host.conflicts,
        }, indent=2))
    else:
        for p in host.plugins:
            comps = []
            for attr in ("rewards", "backbones", "balancers"):
                if getattr(p, attr):
                    comps.append(f"{attr}: {', '.join(getattr(p, attr))}")
            print(f"{p.name:<14} {p.distribution} {p.version}  [{p.status}]  {'; '.join(comps)}")
            if p.status != "ok":
                print(f"    error: {p.error}")
                if args.verbose and p.traceback:
                    print("    " + p.traceback.replace("\n", "\n    "))
        for c in host.conflicts:
            print(f"conflict: {c}")
        if not host.plugins:
            print("no plugins installed")
    if getattr(args, "action", None) == "check":
        bad = [p for p in host.plugins if p.status != "ok"]
        if bad or host.conflicts:
            print(f"plugins check failed: {len(bad)} plugin(s) failed, {len(host.conflicts)} conflict(s)",
                  file=sys.stderr)
            return 1
        print("plugins check: all ok")
    return 0


def _listing(kind: str):
    def run(args: argparse.Namespace) -> int:
        host = _host()
        table = host.components[kind]
        if args.json:
            print(json.dumps([
                {"name": n, "description": c.spec.description, "plugin": c.plugin.name,
                 "distribution": c.plugin.distribution, "version": c.plugin.version}
                for n, c in sorted(table.items())
            ], indent=2))
            return 0
        for n, c in sorted(table.items()):
            print(f"{n:<24} {c.spec.description}  ({c.plugin.distribution} {c.plugin.version})")
        for p in host.plugins:
            if p.status != "ok":
                print(f"(plugin '{p.name}' from {p.distribution} failed to load: {p.error})")
        return 0
    return run


# ---------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from marble.config import load_config, validate_components

    overrides = list(args.overrides)
    cfg = load_config(args.config, overrides)
    validate_components(cfg)
    from marble.prompts import load_sources

    n_prompts = sum(len(s.prompts) for s in load_sources(cfg.prompts, "prompts"))
    if cfg.eval_prompts:
        load_sources(cfg.eval_prompts, "eval_prompts")
    if args.dry_run:
        print(f"config {args.config} is valid: backbone {cfg.backbone.name}, rewards "
              f"{', '.join(r.name for r in cfg.rewards)}, balancer {cfg.balancer.name}, "
              f"{n_prompts} training prompts, {cfg.train.iterations} iterations -> {cfg.output_dir}")
        return 0
    if args.num_processes and args.num_processes > 1:
        from marble.distributed import launch

        return launch(args.config, overrides, args.num_processes, debug=args.debug)
    _quiet_libraries(args.debug)
    from marble.trainer import Trainer

    Trainer(cfg).train()
    return 0


def _quiet_libraries(debug: bool) -> None:
    """Model libraries log per-call warnings (tokenizer truncation) and loading bars that bury
    the progress bar; keep errors only unless --debug."""
    if debug:
        return
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for mod in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            lib = __import__(mod, fromlist=["disable_progress_bar"])
        except ImportError:
            continue
        lib.set_verbosity_error()
        lib.disable_progress_bar()


# ---------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marble", description=__doc__.split("\n")[0] + " Fine-tune text-to-image "
                                     "diffusion models against several rewards (DiffusionNFT + MARBLE).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list installed plugins, their status and components")
    p.add_argument("action", nargs="?", choices=["check"], help="check: exit non-zero if any plugin failed")
    p.add_argument("--json", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of failed plugins")
    p.set_defaults(func=cmd_plugins)
    for kind in ("reward", "backbone", "balancer"):
        p = sub.add_parser(kind + "s", help=f"list installed {kind}s")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=_listing(kind))

    p = sub.add_parser("train", help="train with a YAML config",
                       description="Train with a YAML config. Overrides: key=value (OmegaConf dotlist), "
                                   "e.g. train.iterations=5 balancer.name=weighted_sum resume=RUN_DIR.")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--dry-run", action="store_true", help="validate the config and plugins, build nothing")
    p.add_argument("--num-processes", type=int, default=None,
                   help="launch N processes with accelerate (data parallel)")
    p.set_defaults(func=cmd_train)

    for name in ("score_cli", "bench", "compare"):
        try:
            mod = __import__(f"marble.{name}", fromlist=["add_parser"])
        except ImportError:
            continue
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also come after options (train CFG --num-processes 2 a.b=1)
    if hasattr(args, "overrides"):
        args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
        extra = [e for e in extra if not ("=" in e and not e.startswith("-"))]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "command", None) == "train" and "--debug" in (args.overrides or []):
        args.overrides.remove("--debug")
        args.debug = True
    try:
        return int(args.func(args) or 0)
    except MarbleError as exc:
        if args.debug:
            traceback.print_exc()
        else:
            print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
