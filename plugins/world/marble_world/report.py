"""Compare training runs: reward curves, alpha curves, conflict diagnostics, a summary table.

    python -m marble_world.report --runs runs/weighted runs/marble \\
        --labels "weighted sum" MARBLE --out report/

Each run folder holds ``metrics.jsonl``: one JSON object per training iteration with
``iteration`` and any of ``reward/<name>/mean``, ``eval/<name>/mean``, ``alpha/<name>``,
``alpha_bar/<name>``, ``cos/<balancer>/min``, ``conflict_rate/<balancer>`` (missing keys are
skipped). Written to ``--out``:

* ``rewards.png``      one panel per reward, every run's mean-reward curve (moving average over
                       ~1/12 of the run, raw faint; eval dashed with dots);
* ``alpha.png``        alpha* (dots, refresh iterations) and alpha-bar (lines) per reward;
* ``diagnostics.png``  min cosine between per-reward gradients and the update, conflict rate;
* ``summary.md``       reward x {base, each run} (also printed), plus the runs' image grids
                       (``grids/*.png``, and the first and last ``images/eval-*.png``),
                       copied next to it.

``save_grid(images, prompts, path)`` draws a grid of images with each prompt under its image.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

TAIL = 5  # without eval metrics a run's final score is the mean of its last TAIL iterations


# ---------------------------------------------------------------------------- reading

def read_metrics(run: str | Path) -> list[dict]:
    """The rows of ``<run>/metrics.jsonl`` (or of the file itself), sorted by iteration."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics file at {path} (a run folder must contain metrics.jsonl)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or "iteration" not in row:
            raise ValueError(f"{path}:{n}: each line must be a JSON object with an 'iteration' key")
        rows.append(row)
    rows.sort(key=lambda r: r["iteration"])
    return rows


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(iterations, values) of one key, skipping rows without it (or with a non-finite value)."""
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(r["iteration"])
            ys.append(float(v))
    return xs, ys


def names(runs_rows: Sequence[list[dict]], prefix: str, suffix: str = "") -> list[str]:
    """Component names found in keys ``<prefix><name><suffix>``, in first-seen order."""
    pat = re.compile("^" + re.escape(prefix) + r"(.+?)" + re.escape(suffix) + "$")
    seen: dict[str, None] = {}
    for rows in runs_rows:
        for r in rows:
            for k in r:
                m = pat.match(k)
                if m:
                    seen.setdefault(m.group(1), None)
    return list(seen)


# ---------------------------------------------------------------------------- summary

def summarize(runs_rows: Sequence[list[dict]], labels: Sequence[str]) -> tuple[list[str], dict[str, dict[str, float]], str]:
    """Per reward: base and each run's final score. Returns (columns, table, how-measured note).

    With eval metrics: base = the first run's first eval, final = each run's last eval.
    Otherwise: base = the first run's first training-iteration mean (its rollouts come from
    the base model), final = the mean of each run's last TAIL iterations."""
    use_eval = bool(names(runs_rows, "eval/", "/mean"))
    prefix = "eval/" if use_eval else "reward/"
    rewards = names(runs_rows, prefix, "/mean")
    table: dict[str, dict[str, float]] = {}
    for name in rewards:
        key = f"{prefix}{name}/mean"
        row: dict[str, float] = {}
        _, base = series(runs_rows[0], key)
        if base:
            row["base"] = base[0]
        for label, rows in zip(labels, runs_rows):
            _, ys = series(rows, key)
            if ys:
                row[label] = ys[-1] if use_eval else sum(ys[-TAIL:]) / len(ys[-TAIL:])
        table[name] = row
    note = (
        "eval rewards: base = first evaluation, runs = last evaluation"
        if use_eval
        else f"training rewards: base = first iteration, runs = mean of the last {TAIL} iterations"
    )
    return ["base", *labels], table, note


def markdown_table(columns: Sequence[str], table: dict[str, dict[str, float]]) -> str:
    lines = ["| reward | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, row in table.items():
        best = max((row[c] for c in columns[1:] if c in row), default=None)
        cells = []
        for c in columns:
            if c not in row:
                cells.append("-")
            else:
                s = f"{row[c]:.4g}"
                cells.append(f"**{s}**" if c != "base" and row[c] == best and len(columns) > 2 else s)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    runs = [c for c in columns if c != "base"]
    if "base" in columns and table and all("base" in row for row in table.values()):
        # the headline number: each run's smallest improvement over the base model
        worst = {c: min(row[c] - row["base"] for row in table.values()) for c in runs
                 if all(c in row for row in table.values())}
        best = max(worst.values(), default=None)
        cells = ["-" if c not in worst else (f"**{worst[c]:+.4g}**" if worst[c] == best and len(worst) > 1
                                              else f"{worst[c]:+.4g}") for c in runs]
        lines.append("| worst-reward gain | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panels(n: int, width: float = 4.0, height: float = 3.0):
    plt = _plt()
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [a for row in axes for a in row]
    for a in flat[n:]:
        a.set_visible(False)
    return plt, fig, flat[:n]


def plot_rewards(runs_rows, labels, path: Path) -> bool:
    rewards = names(runs_rows, "reward/", "/mean")
    for extra in names(runs_rows, "eval/", "/mean"):
        if extra not in rewards:
            rewards.append(extra)
    if not rewards:
        return False
    plt, fig, axes = _panels(len(rewards))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes, rewards):
        for i, (label, rows) in enumerate(zip(labels, runs_rows)):
            c = colors[i % len(colors)]
            xs, ys = series(rows, f"reward/{name}/mean")
            if xs:
                # training means depend on the iteration's prompts: faint raw curve + moving average
                k = max(1, len(ys) // 12)
                smooth = [sum(ys[max(0, i - k + 1) : i + 1]) / len(ys[max(0, i - k + 1) : i + 1]) for i in range(len(ys))]
                if k > 1:
                    ax.plot(xs, ys, color=c, lw=0.8, alpha=0.3)
                ax.plot(xs, smooth, color=c, label=label + (f" (mean of {k})" if k > 1 else ""), lw=1.5)
            xs, ys = series(rows, f"eval/{name}/mean")
            if xs:
                ax.plot(xs, ys, color=c, ls="--", marker="o", ms=3, label=f"{label} (eval)")
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.set_ylabel("mean reward")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Per-reward mean score")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_alpha(runs_rows, labels, path: Path) -> bool:
    with_alpha = [(l, r) for l, r in zip(labels, runs_rows) if names([r], "alpha/") or names([r], "alpha_bar/")]
    if not with_alpha:
        return False
    plt, fig, axes = _panels(len(with_alpha), width=5.0)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (label, rows) in zip(axes, with_alpha):
        rewards = names([rows], "alpha_bar/") + [n for n in names([rows], "alpha/") if n not in names([rows], "alpha_bar/")]
        for i, name in enumerate(rewards):
            c = colors[i % len(colors)]
            xs, ys = series(rows, f"alpha_bar/{name}")
            if xs:
                ax.plot(xs, ys, color=c, lw=1.5, label=f"abar {name}")
            xs, ys = series(rows, f"alpha/{name}")
            if xs:
                ax.plot(xs, ys, color=c, ls="none", marker="o", ms=3, alpha=0.6, label=f"alpha* {name}")
        ax.set_title(f"{label}: reward weights")
        ax.set_xlabel("iteration")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_diagnostics(runs_rows, labels, path: Path) -> bool:
    cos_names = names(runs_rows, "cos/", "/min")
    conf_names = names(runs_rows, "conflict_rate/")
    if not cos_names and not conf_names:
        return False
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    styles = ["-", "--", ":", "-."]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, rows) in enumerate(zip(labels, runs_rows)):
        for j, b in enumerate(cos_names):
            xs, ys = series(rows, f"cos/{b}/min")
            if xs:
                a1.plot(xs, ys, color=colors[j % len(colors)], ls=styles[i % len(styles)], marker=".",
                        label=f"{label}: {b} direction")
        for j, b in enumerate(conf_names):
            xs, ys = series(rows, f"conflict_rate/{b}")
            if xs:
                a2.plot(xs, ys, color=colors[j % len(colors)], ls=styles[i % len(styles)], marker=".",
                        label=f"{label}: {b}")
    a1.axhline(0.0, color="k", lw=0.8)
    a1.set_title("min over rewards of cos(g_k, update)\n(< 0: the update pushes some reward down)", fontsize=10)
    a1.set_xlabel("iteration")
    a2.set_title("conflict rate\n(share of refreshes with a negative cosine)", fontsize=10)
    a2.set_xlabel("iteration")
    a2.set_ylim(-0.02, 1.02)
    for a in (a1, a2):
        a.grid(alpha=0.3)
        if a.lines:
            a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------- grids

def _to_pil_list(images: Any):
    import numpy as np
    from PIL import Image

    if hasattr(images, "detach"):
        images = images.detach().to("cpu").float().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"images must be N x 3 x H x W (or N x H x W x 3), got shape {images.shape}")
        if images.shape[1] == 3 and images.shape[-1] != 3:
            images = images.transpose(0, 2, 3, 1)
        if images.dtype != np.uint8:
            images = (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return [Image.fromarray(a) for a in images]
    out = []
    for im in images:
        out.append(im.convert("RGB") if isinstance(im, Image.Image) else _to_pil_list(np.asarray(im)[None])[0])
    return out


def _wrap(text: str, font, width: int, draw) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        trial = f"{cur} {word}".strip()
        if cur and draw.textlength(trial, font=font) > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    if cur:
        lines.append(cur)
    return lines or [""]


def save_grid(images: Any, prompts: Sequence[str], path: str | Path, *, ncols: int | None = None,
              cell: int = 128, title: str | None = None) -> Path:
    """Save a grid PNG: each image (upscaled to ``cell`` px, nearest) with its prompt under it.

    ``images``: tensor/array N x 3 x H x W in [0, 1] (or N x H x W x 3, or a list of PIL images)."""
    from PIL import Image, ImageDraw, ImageFont

    pics = _to_pil_list(images)
    if len(pics) != len(prompts):
        raise ValueError(f"save_grid: {len(pics)} images but {len(prompts)} prompts")
    if not pics:
        raise ValueError("save_grid: no images")
    n = len(pics)
    ncols = ncols or min(n, 8)
    nrows = math.ceil(n / ncols)
    font = ImageFont.load_default(size=max(9, cell // 11))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(font.getbbox("Ag")[3] - font.getbbox("Ag")[1]) + 3
    wrapped = [_wrap(p, font, cell - 6, probe) for p in prompts]
    text_h = line_h * max(len(w) for w in wrapped) + 6
    title_h = line_h + 8 if title else 0
    pad = 4
    W = ncols * (cell + pad) + pad
    H = title_h + nrows * (cell + text_h + pad) + pad
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, font=font, fill=(0, 0, 0))
    for i, (pic, lines) in enumerate(zip(pics, wrapped)):
        r, c = divmod(i, ncols)
        x = pad + c * (cell + pad)
        y = title_h + pad + r * (cell + text_h + pad)
        canvas.paste(pic.resize((cell, cell), Image.NEAREST), (x, y))
        for k, line in enumerate(lines):
            draw.text((x + 3, y + cell + 3 + k * line_h), line, font=font, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


# ---------------------------------------------------------------------------- report

def find_grids(run: Path) -> list[Path]:
    """Image grids of a run: everything in ``grids/``, plus the first and the last of the
    trainer's evaluation grids ``images/eval-<iteration>.png`` (before / after)."""
    found = sorted((run / "grids").glob("*.png")) if (run / "grids").is_dir() else []
    evals = sorted((run / "images").glob("eval-*.png")) if (run / "images").is_dir() else []
    found += evals[:1] + evals[-1:] if len(evals) > 1 else evals
    return found


def build_report(runs: Sequence[str | Path], labels: Sequence[str] | None, out: str | Path) -> str:
    """Write the report folder; returns the markdown summary."""
    runs = [Path(r) for r in runs]
    if not runs:
        raise ValueError("give at least one run folder")
    labels = list(labels) if labels else [r.name for r in runs]
    if len(labels) != len(runs):
        raise ValueError(f"{len(runs)} runs but {len(labels)} labels")
    if "base" in labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct and not 'base', got {labels}")
    runs_rows = [read_metrics(r) for r in runs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for fname, fn, caption in (
        ("rewards.png", plot_rewards, "Per-reward mean curves"),
        ("alpha.png", plot_alpha, "MARBLE reward weights (alpha*, alpha-bar)"),
        ("diagnostics.png", plot_diagnostics, "Gradient-conflict diagnostics"),
    ):
        if fn(runs_rows, labels, out / fname):
            figures.append((caption, fname))
    columns, table, note = summarize(runs_rows, labels)
    md = ["# Run comparison", "", markdown_table(columns, table), "", f"({note}; best run in bold)", ""]
    for caption, fname in figures:
        md += [f"## {caption}", "", f"![{caption}]({fname})", ""]
    grids = []
    for label, run in zip(labels, runs):
        for png in find_grids(run):
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{label}_{png.name}")
            shutil.copyfile(png, out / safe)
            grids.append((f"{label}: {png.stem}", safe))
    if grids:
        md += ["## Samples of fixed prompts", ""]
        for caption, fname in grids:
            md += [f"### {caption}", "", f"![{caption}]({fname})", ""]
    text = "\n".join(md)
    (out / "summary.md").write_text(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m marble_world.report", description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="run folders (each with metrics.jsonl)")
    ap.add_argument("--labels", nargs="+", help="one label per run (default: folder names)")
    ap.add_argument("--out", required=True, help="report folder to write")
    a = ap.parse_args(argv)
    try:
        labels = a.labels
        runs_rows_labels = labels or [Path(r).name for r in a.runs]
        build_report(a.runs, runs_rows_labels, a.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    columns, table, note = summarize([read_metrics(r) for r in a.runs], runs_rows_labels)
    print(markdown_table(columns, table))
    print(f"({note})")
    print(f"report written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
