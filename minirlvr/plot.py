"""Training curves from metrics.jsonl: reward, accuracy, KL, entropy and response length, one panel each.

    python -m minirlvr.plot runs/grpo                      # -> runs/grpo/curves.png
    python -m minirlvr.plot runs/grpo runs/ppo --out cmp.png --smooth 5    # several runs on the same axes

A run is its output folder (or its metrics.jsonl). Panels whose metric no run logged are left out; a run that
logged none of them (pretraining, SFT) gets its loss. Needs matplotlib (the `plot` extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minirlvr.analysis import pyplot, save_figure
from minirlvr.data import DataError, read_jsonl

PANELS = (("reward_mean", "reward"), ("accuracy", "accuracy"), ("kl", "KL to reference (nats/token)"),
          ("entropy_mean", "entropy (nats/token)"), ("response_len", "response length (tokens)"))


def read_metrics(run: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl (given the folder or the file), sorted by step."""
    path = Path(run)
    path = path / "metrics.jsonl" if path.is_dir() else path
    rows = read_jsonl(path)
    if not all(isinstance(r.get("step"), int) for r in rows):
        bad = next(r for r in rows if not isinstance(r.get("step"), int))
        raise DataError(f"{bad['_where']}: not a metrics row (no integer 'step'); give a run folder or its metrics.jsonl")
    return sorted(rows, key=lambda r: r["step"])


def moving_average(ys: list[float], k: int) -> list[float]:
    """Trailing mean over the last k points (k <= 1: unchanged); the first points average what exists."""
    if k <= 1:
        return list(ys)
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y - (ys[i - k] if i >= k else 0.0)
        out.append(total / min(i + 1, k))
    return out


def panels_for(runs: dict[str, list[dict]]) -> list[tuple[str, str]]:
    logged = {k for rows in runs.values() for r in rows for k in r}
    chosen = [p for p in PANELS if p[0] in logged]
    return chosen or ([("loss", "loss")] if "loss" in logged else [])


def plot_runs(runs: dict[str, list[dict]], path: Path, smooth: int = 1) -> list[str]:
    """Draws one panel per metric (the runs as lines) into `path`; returns the metrics drawn."""
    plt = pyplot()
    panels = panels_for(runs)
    if not panels:
        raise DataError(f"{', '.join(runs)}: no reward, accuracy, kl, entropy_mean, response_len or loss to plot")
    cols = min(3, len(panels))
    grid = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(grid, cols, figsize=(3.6 * cols, 2.9 * grid), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (key, label) in zip(axes.flat, panels):
        for name, rows in runs.items():
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, moving_average(list(ys), smooth), label=name, lw=1.2)
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    if len(runs) > 1:
        axes[0][0].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=110)
    return [k for k, _ in panels]


def run_names(runs: list[str]) -> list[str]:
    """A label per run: its folder name, or more of its path when two would collide."""
    paths = [Path(r).resolve() for r in runs]
    paths = [p.parent if p.suffix == ".jsonl" else p for p in paths]
    for k in range(1, max(len(p.parts) for p in paths) + 1):
        names = ["/".join(p.parts[-k:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minirlvr.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (OUT of train.py) or metrics.jsonl files")
    p.add_argument("--out", help="image file (default: FIRST_RUN/curves.png)")
    p.add_argument("--smooth", type=int, default=1, help="trailing moving average over this many steps")
    a = p.parse_args(argv)
    try:
        runs = {name: read_metrics(r) for name, r in zip(run_names(a.runs), a.runs)}
        first = Path(a.runs[0])
        out = Path(a.out) if a.out else (first if first.is_dir() else first.parent) / "curves.png"
        drawn = plot_runs(runs, out, a.smooth)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError:
        print("error: plotting needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')", file=sys.stderr)
        return 2
    print(f"{out} ({', '.join(drawn)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
