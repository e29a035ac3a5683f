"""`llt plot RUN [RUN ...]`: several runs' training and eval loss on one figure.

    llt plot output/lora-20261128-101500 output/full-20261128-120000 --out compare.png

Each RUN is a run folder or a checkpoint (anything holding `loss_history.json`, or
`trainer_state.json` for checkpoints of other tools). The x axis is input tokens seen by
default, so runs with different batch sizes or sequence lengths line up; `--x step`
plots against optimizer steps. Eval points are drawn as markers in the run's colour.
`--metric NAME` plots another logged figure instead of the loss (GRPO's `reward`, DPO's
`rewards/margins`, ...), with its held-out `eval_NAME` where there is one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from llt.errors import LltError
from llt.runs.history import draw_curves, finish_axes, pyplot, read_history


class PlotError(LltError, ValueError):
    pass


def series(history: list[dict], x: str, metric: str = "loss") -> tuple[list, list, list, list]:
    """(train x, train values, eval x, eval values) of `metric`. Eval entries carry no token
    count; theirs is read off the training entries at the same step."""
    train = [e for e in history if e.get(metric) is not None and "step" in e]
    evals = [e for e in history if e.get(f"eval_{metric}") is not None and "step" in e]
    if x == "step":
        return ([e["step"] for e in train], [e[metric] for e in train],
                [e["step"] for e in evals], [e[f"eval_{metric}"] for e in evals])
    if train and all("tokens_seen" in e for e in train):
        steps = [e["step"] for e in train]
        tokens = [e["tokens_seen"] for e in train]
        ex = np.interp([e["step"] for e in evals], [0] + steps, [0] + tokens).tolist()
        return tokens, [e[metric] for e in train], ex, [e[f"eval_{metric}"] for e in evals]
    raise PlotError("a run logged no tokens_seen (made by another tool?); plot it with --x step")


def plot_runs(runs: list[str], out: str | Path, x: str = "tokens", labels: list[str] | None = None,
              logy: bool = False, metric: str = "loss") -> Path:
    labels = labels or [Path(r).name for r in runs]
    if len(labels) != len(runs):
        raise PlotError(f"--labels: {len(labels)} labels for {len(runs)} runs")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for run, label in zip(runs, labels):
        try:
            tx, ty, ex, ey = series(read_history(run), x, metric)
        except LltError as e:
            raise PlotError(f"{run}: {e}") from None
        if not tx and not ex:
            raise PlotError(f"{run}: no {metric} logged yet")
        draw_curves(ax, tx, ty, ex, ey, label, metric)
    finish_axes(ax, "input tokens seen" if x == "tokens" else "optimizer step", logy)
    ax.set_ylabel(metric)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llt plot", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders or checkpoints")
    ap.add_argument("--out", default="loss_comparison.png", help="image file to write (.png, .svg, .pdf)")
    ap.add_argument("--x", choices=("tokens", "step"), default="tokens", help="x axis (default: tokens)")
    ap.add_argument("--labels", nargs="+", help="legend labels, one per run (default: folder names)")
    ap.add_argument("--logy", action="store_true", help="log-scale loss axis")
    ap.add_argument("--metric", default="loss", help="the logged figure to plot (default: loss; e.g. reward)")
    a = ap.parse_args(argv)
    out = plot_runs(a.runs, a.out, a.x, a.labels, a.logy, a.metric)
    print(f"llt plot: wrote {out}")
    return 0
