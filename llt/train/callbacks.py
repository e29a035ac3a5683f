"""Trainer callbacks: throughput and MFU, per-corpus mix, loss report, save schedule,
preemption.

Cross-cutting behaviour lives here rather than in `LltTrainer`, which only feeds the
throughput and mix meters the batches it trains on.

Public: `ThroughputCallback`, `LossReportCallback`, `ProgressLineCallback` and
`PreemptionCallback` also work in a plain `transformers.Trainer` on any dataset:

    from llt.train.callbacks import LossReportCallback, ThroughputCallback
    trainer = Trainer(model, args, train_dataset=ds,
                      callbacks=[ThroughputCallback.for_model(model), LossReportCallback()])

There, throughput comes from HF's own count (`include_num_input_tokens_seen`, which
`for_model` asks you to set) rather than llt's collator, so it has no trained-token
figures, and MFU counts the matmul FLOPs only (llt's collator also counts attention's).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

# Dense bf16 peak TFLOPS by GPU name (vendor datasheets, no sparsity).
PEAK_TFLOPS = {
    "H200": 989.5, "H100 SXM": 989.5, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.5,
    "GH200": 989.5, "B200": 2250.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L40": 181.0,
    "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.2, "RTX 3090": 71.0,
    "A6000": 154.8, "V100": 125.0, "T4": 65.0,
}


def peak_tflops(override: float | None = None) -> float | None:
    """The device's dense bf16 peak; None on CPU or an unknown GPU (then no MFU is logged)."""
    if override:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_TFLOPS[key]
    return None


class ThroughputCallback(TrainerCallback):
    """Logs trained tokens/s (tokens whose label is trained on, over all ranks), input
    tokens/s (padding excluded) and MFU.

    FLOPs per step = 6 * matmul_params * tokens + 12 * layers * attn_width * pairs, where
    `pairs` is the number of causal query-key pairs summed over documents, not over
    packed rows or padded widths (sum over tokens of position + 1); see `observe`.
    The collator computes the counts on the CPU; they are summed on the device and read
    only when a log line is written.
    """

    def __init__(self, flops_info: dict, peak: float | None = None):
        self.info, self.peak = flops_info, peak
        self.counts: torch.Tensor | None = None
        self.totals = [0.0, 0.0, 0.0]
        self.last_time: float | None = None
        self.fed = False  # llt's collator counts; else HF's num_input_tokens_seen
        self.hf_seen = 0

    @classmethod
    def for_model(cls, model, peak: float | None = None) -> "ThroughputCallback":
        """For a plain `transformers.Trainer`: FLOPs from `model`, the device's peak looked
        up (or `peak`). Give the Trainer `include_num_input_tokens_seen=True`."""
        from llt.model.loading import flops_per_token_info

        return cls(flops_per_token_info(model), peak_tflops(peak))

    def observe(self, counts: torch.Tensor) -> None:
        """Add a batch's `llt_counts` (trained tokens, input tokens, attention pairs)."""
        self.fed = True
        self.counts = counts.double() if self.counts is None else self.counts + counts

    def on_train_begin(self, args, state, control, **kw):
        self.last_time = time.perf_counter()
        # A resumed run goes on counting from where the checkpoint's history stopped.
        seen = [e for e in state.log_history if "tokens_seen" in e]
        if seen:
            self.totals = [seen[-1].get("trained_tokens_seen", 0), seen[-1]["tokens_seen"], 0.0]
        self.hf_seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)

    def on_step_end(self, args, state, control, **kw):
        self.step_end = time.perf_counter()

    def on_evaluate(self, args, state, control, **kw):
        # Evaluation and saving run after a step ends; their time is not training time.
        now = time.perf_counter()
        if self.last_time is not None:
            start = max(getattr(self, "step_end", now), self.last_time)
            self.last_time += now - start
        self.step_end = now

    on_save = on_evaluate

    def on_log(self, args, state, control, logs=None, **kw):
        if logs is None or "loss" not in logs or self.last_time is None:
            return
        now = time.perf_counter()
        dt, self.last_time = now - self.last_time, now
        if not self.fed:  # a plain Trainer: HF's count, already summed over ranks
            seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
            tokens, self.hf_seen = seen - self.hf_seen, seen
            self.totals[1] += tokens
            figures = {"tokens_per_second": round(tokens / dt, 1), "tokens_seen": int(self.totals[1])}
            if self.peak:
                figures["mfu"] = round(6 * self.info["matmul_params"] * tokens / dt
                                       / (self.peak * 1e12 * max(args.world_size, 1)), 4)
            return self._record(logs, state, figures)
        counts = self.counts if self.counts is not None else torch.zeros(3, dtype=torch.float64)
        self.counts = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            counts = counts.to(args.device)
            torch.distributed.all_reduce(counts)
        trained, tokens, pairs = counts.tolist()
        self.totals = [a + b for a, b in zip(self.totals, (trained, tokens, pairs))]
        figures = {
            "trained_tokens_per_second": round(trained / dt, 1),
            "tokens_per_second": round(tokens / dt, 1),
            "trained_tokens_seen": int(self.totals[0]),
            "tokens_seen": int(self.totals[1]),
        }
        flops = (6 * self.info["matmul_params"] * tokens
                 + 12 * self.info["layers"] * self.info["attn_width"] * pairs)
        if self.peak:
            figures["mfu"] = round(flops / dt / (self.peak * 1e12 * max(args.world_size, 1)), 4)
        self._record(logs, state, figures)

    @staticmethod
    def _record(logs: dict, state, figures: dict) -> None:
        logs.update(figures)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(figures)


class CorpusMixCallback(TrainerCallback):
    """With several corpora, logs what each one actually got: `tokens_seen/<name>`
    (input tokens so far), `share/<name>` (its share of all input tokens so far) and
    `loss/<name>` (its mean loss per trained token since the last log line), summed over
    ranks. The counts come from the collator, the losses from llt's chunked loss."""

    def __init__(self, names: list[str]):
        self.names = names
        self.pending: torch.Tensor | None = None  # [G, 3]: input tokens, trained tokens, loss sum
        self.seen = [0.0] * len(names)

    def observe_counts(self, corpus_counts: torch.Tensor) -> None:
        add = torch.zeros(len(self.names), 3, dtype=torch.float64, device=corpus_counts.device)
        add[:, :2] = corpus_counts[:len(self.names)]
        self.pending = add if self.pending is None else self.pending + add.to(self.pending.device)

    def observe_loss(self, group_loss: torch.Tensor) -> None:
        if self.pending is None:
            return
        self.pending = self.pending.to(group_loss.device)
        self.pending[:, 2] += group_loss.detach().double()[:len(self.names)]

    def on_train_begin(self, args, state, control, **kw):
        last = next((e for e in reversed(state.log_history) if f"tokens_seen/{self.names[0]}" in e), None)
        if last:
            self.seen = [last.get(f"tokens_seen/{n}", 0) for n in self.names]

    def on_log(self, args, state, control, logs=None, **kw):
        if logs is None or "loss" not in logs:
            return
        pending = self.pending if self.pending is not None else torch.zeros(len(self.names), 3, dtype=torch.float64)
        self.pending = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            pending = pending.to(args.device)
            torch.distributed.all_reduce(pending)
        rows = pending.tolist()
        self.seen = [s + r[0] for s, r in zip(self.seen, rows)]
        total = sum(self.seen) or 1.0
        figures = {}
        for name, seen, (_, trained, loss) in zip(self.names, self.seen, rows):
            figures[f"tokens_seen/{name}"] = int(seen)
            figures[f"share/{name}"] = round(seen / total, 4)
            if trained and loss:
                figures[f"loss/{name}"] = round(loss / trained, 4)
        logs.update(figures)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(figures)


class ProgressLineCallback(TrainerCallback):
    """Training progress as a plain line every `LLT_PROGRESS_SECONDS` (default 30) when
    stderr is a file or a pipe, where HF's tqdm bar would write a carriage-return update per
    step (llt then turns the bar off; see `LltTrainingArguments`)."""

    def __init__(self, every: float | None = None):
        from llt.progress import interval

        self.every = interval() if every is None else every
        self.start = self.last = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.monotonic()
        if not state.is_world_process_zero or now - self.last < self.every:
            return
        self.last = now
        done, total = state.global_step, state.max_steps or 0
        secs = now - self.start
        eta = f", ETA {secs / done * (total - done):.0f} s" if done and total else ""
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        import sys
        print(f"llt: step {done:,}/{total:,}{pct}, {secs:.0f} s{eta}", file=sys.stderr, flush=True)


class LossReportCallback(TrainerCallback):
    """Writes the loss history, its plot and `run_summary.json` into the run folder at the
    end (each checkpoint gets its own history and plot as it is written, see
    `llt.train.hf_hooks`)."""

    def on_train_end(self, args, state, control, **kw):
        if state.is_world_process_zero:
            from llt.runs.history import write_loss_report
            from llt.train.report import run_summary

            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            write_loss_report(args.output_dir, state.log_history)
            (Path(args.output_dir) / "run_summary.json").write_text(
                json.dumps(run_summary(state, args.output_dir), indent=1))


class SaveScheduleCallback(TrainerCallback):
    """Saves every `save_epochs` epochs and once at the end (`save_final`), on top of
    HF's `--save_steps`. The end may come early: a callback that sets
    `control.should_training_stop` (early stopping, a user's stop file) gets the final
    checkpoint too, which is why this one runs after the user's callbacks."""

    def __init__(self, save_epochs: int = 0, save_final: bool = True):
        self.save_epochs, self.save_final = save_epochs, save_final
        self.last_saved = -1

    def on_step_end(self, args, state, control, **kw):
        if self.save_final and (state.global_step >= state.max_steps or control.should_training_stop):
            control.should_save = True

    def on_log(self, args, state, control, **kw):
        # HF saves after logging and evaluating in the same step: a stop asked there is in time.
        if self.save_final and control.should_training_stop and state.global_step != self.last_saved:
            control.should_save = True

    on_evaluate = on_log

    def on_epoch_end(self, args, state, control, **kw):
        done = round(state.epoch or 0)
        if (self.save_epochs and done and done % self.save_epochs == 0 and abs(state.epoch - done) < 1e-6
                and state.global_step != self.last_saved):  # not twice for the same step
            control.should_save = True

    def on_save(self, args, state, control, **kw):
        self.last_saved = state.global_step


class PreemptionCallback(TrainerCallback):
    """On SIGTERM or SIGUSR1 (what SLURM and Kubernetes send before killing a job), or
    Ctrl-C (SIGINT), finish the current optimizer step, save a resumable checkpoint and
    stop. A second Ctrl-C raises `KeyboardInterrupt` at once: the user chose not to wait
    (the newest complete checkpoint stays; a save it cuts short is never loaded).

    The signal may reach one rank only; the flag is all-reduced at every step end so that
    all ranks stop at the same step and take part in the same save. `stopped_at` is what
    the trainer reads to make that save resumable (`LltTrainer.force_resumable`).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self.stopped_at: int | None = None
        self.failure: str | None = None  # a user callback's error (llt.train.user_callbacks)
        self._previous: dict = {}

    def fail(self, message: str) -> None:
        """A user callback raised: stop after this step, with a resumable checkpoint, as on
        a signal (the first error is the one reported)."""
        self.failure = self.failure or message

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt
        first = self.received is None
        self.received = signum
        if first and os.environ.get("LOCAL_RANK", "0") == "0":
            # Say at once that the signal was seen (a step may take minutes). os.write, not
            # print: the handler may run while the main thread is inside a write to stderr.
            again = " (Ctrl-C again to stop at once, without one)" if signum == signal.SIGINT else ""
            os.write(2, f"llt: {signal.Signals(signum).name} received: a checkpoint is saved "
                        f"after this step{again}\n".encode())

    def on_train_begin(self, args, state, control, **kw):
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # a background job keeps ignoring Ctrl-C
                    self._previous[sig] = signal.signal(sig, self._handle)
            # Under `llt launch`, say which processes train: the signal goes to them, not to
            # a launcher that would quit (or kill them) before the checkpoint is saved.
            if os.environ.get("LLT_LAUNCH_DIR"):
                Path(os.environ["LLT_LAUNCH_DIR"], str(os.getpid())).touch()

    def on_step_end(self, args, state, control, **kw):
        flag = 1.0 if self.received is not None or self.failure else 0.0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([flag], device=args.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flag = t.item()
        if flag:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step

    def on_train_end(self, args, state, control, **kw):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
