"""A run's loss history: the log entries that hold a loss, written as `loss_history.json`
and drawn as `loss.png` (into every checkpoint as it is saved, and into the run folder at
the end), and read back by `llt plot`. The one place a loss curve is drawn."""

from __future__ import annotations

import json
from pathlib import Path

from llt.errors import LltError
from llt.runs.folder import HISTORY, TRAINER_STATE, checkpoints


def loss_history(log_history: list[dict]) -> list[dict]:
    """The log entries with a training or an eval loss."""
    return [e for e in log_history if "loss" in e or "eval_loss" in e]


def read_history(path: str | Path) -> list[dict]:
    """The log entries of a run folder or checkpoint (or any HF checkpoint's trainer state)."""
    p = Path(path)
    for name in (HISTORY, TRAINER_STATE):
        f = p / name
        if f.is_file():
            data = json.loads(f.read_text())
            return data["log_history"] if isinstance(data, dict) else data
    ckpts = [c / HISTORY for c in checkpoints(p) if (c / HISTORY).is_file()]
    if ckpts:  # a run still going (or killed): its newest checkpoint's copy
        return json.loads(ckpts[-1].read_text())
    raise LltError(f"{p}: no {HISTORY} or {TRAINER_STATE} (not a run folder or checkpoint)")


def pyplot():
    """matplotlib's pyplot on the file-only backend (no display on training machines)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def draw_curves(ax, train_x, train_y, eval_x, eval_y, label: str = "", metric: str = "loss") -> None:
    """One run's training `metric` as a line and its eval one as markers in the same colour."""
    prefix = f"{label} " if label else ""
    line, = ax.plot(train_x, train_y, label=f"{prefix}train {metric}", lw=1.2)
    if eval_x:
        ax.plot(eval_x, eval_y, "o--", color=line.get_color(), ms=4, label=f"{prefix}eval {metric}")


def finish_axes(ax, xlabel: str, logy: bool = False) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def write_loss_report(folder: str | Path, log_history: list[dict]) -> None:
    """`loss_history.json` and `loss.png` (loss against optimizer step) in `folder`."""
    folder = Path(folder)
    history = loss_history(log_history)
    (folder / HISTORY).write_text(json.dumps(history, indent=1))
    train = [(e["step"], e["loss"]) for e in history if "loss" in e]
    if not train:
        return
    evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    draw_curves(ax, *zip(*train), *(zip(*evals) if evals else ([], [])))
    finish_axes(ax, "optimizer step")
    fig.tight_layout()
    fig.savefig(folder / "loss.png")
    plt.close(fig)
