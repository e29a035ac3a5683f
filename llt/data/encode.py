"""`llt encode`: user data -> tokenized, sharded `.bin`/`.idx` files.

    llt encode --tokenizer_path TOK --input_path data.jsonl --encode_type pretrain \\
        --output_path out --corpus_name wiki --max_length 2048

Worker processes (one per core) each tokenize batches of records and write their own
shards, so nothing per token crosses a process boundary and memory stays flat. Shards are
written under `.part` names in `<corpus>/.llt-partial/` and moved to their final names
(`<corpus>_<i>.bin/.idx`, the `.idx` last) only when every worker has finished; the
`summary.json` manifest comes last of all. A corpus folder without `summary.json` is an
unfinished run: the next run with the same command discards it and starts over.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import queue
import re
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from llt.data.config import EncodeArgs
from llt.data.format import SampleBatch, ShardWriter, WrittenShard, choose_dtype
from llt.data.manifest import write_manifest
from llt.data.packing import Packer
from llt.data.samples import EncodeStats, Fields, SampleBuilder
from llt.data.sources import Part, find_inputs, part_batches, plan_parts, stream_records
from llt.data.tokenizer import TokenizerInfo, load_tokenizer
from llt.errors import LltError

PARTIAL_DIR = ".llt-partial"
_QUEUE_BATCHES = 4  # streamed batches buffered per worker: bounds the parent's memory
_TOKENIZER = None  # set in the parent before forking, so workers inherit it for free


class ShardSink:
    """A worker's output: rolls to a new shard at `tokens_per_file`, packs if asked."""

    def __init__(self, tmp_dir: Path, worker: int, dtype: str, info: TokenizerInfo,
                 args: EncodeArgs, has_loss_mask: bool):
        self.tmp_dir, self.worker, self.dtype, self.info = tmp_dir, worker, dtype, info
        self.args, self.has_loss_mask = args, has_loss_mask
        self.limit = int(args.tokens_per_file)
        self.packer = Packer(args.max_length, has_loss_mask) if args.merge_data and has_loss_mask else None
        self.stats = EncodeStats()
        self.shards: list[WrittenShard] = []
        self.writer: ShardWriter | None = None

    def _new_writer(self) -> ShardWriter:
        header = {
            "tokenizer_fingerprint": self.info.fingerprint,
            "encode_type": self.args.encode_type,
            "max_length": self.args.max_length,
            "packed": bool(self.packer),
            "corpus_name": self.args.corpus_name,
        }
        stem = self.tmp_dir / f"w{self.worker:03d}_{len(self.shards):05d}"
        return ShardWriter(stem, self.dtype, self.info.vocab_size, self.has_loss_mask, header)

    def add(self, batch: SampleBatch | None) -> None:
        if self.packer is not None:
            batch = self.packer.add(batch)
        self._write(batch)

    def _write(self, batch: SampleBatch | None) -> None:
        if batch is None or not len(batch):
            return
        if self.packer is not None:
            self.stats.packed_capacity += len(batch) * self.args.max_length
        self.stats.samples += len(batch)
        self.stats.tokens += batch.n_tokens
        self.stats.trained_tokens += batch.n_trained
        while len(batch):
            if self.writer is None:
                self.writer = self._new_writer()
            room = self.limit - self.writer.n_tokens
            fit = int(np.searchsorted(np.cumsum(batch.lengths), room, side="right"))
            if fit == 0 and self.writer.n_samples == 0:
                fit = 1  # a sample longer than a whole shard gets a shard of its own
            if fit:
                self.writer.add(batch.slice(0, fit))
                batch = batch.slice(fit, len(batch))
            if len(batch) or self.writer.n_tokens >= self.limit:
                self._close_writer()

    def _close_writer(self) -> None:
        self.shards.append(self.writer.close())
        self.writer = None

    def close(self) -> list[WrittenShard]:
        if self.packer is not None:
            self._write(self.packer.flush())
        if self.writer is not None and self.writer.n_samples:
            self._close_writer()
        elif self.writer is not None:
            self.writer.abort()
        self.writer = None
        return self.shards


@dataclass
class _Job:
    """Everything a worker needs; picklable for the spawn start method."""

    args: EncodeArgs
    info: TokenizerInfo
    dtype: str
    tmp_dir: Path
    parent_pid: int = 0
    parts: list[Part] = field(default_factory=list)
    tokenizer_threads: int = 2


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this worker when the parent dies (kill -9 included).

    Without it an orphaned worker blocks forever on its queue (it holds the pipe's write
    end itself, so it never sees EOF). Elsewhere the per-batch `getppid` check is all.
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _worker(k: int, job: _Job, inbox, results, progress) -> None:
    """Encode this worker's parts and streamed batches; report stats or an error."""
    try:
        _die_with_parent(job.parent_pid)
        args = job.args
        # tokenizers' parallel path, 2+ threads a worker. Measured on Qwen2.5 + wiki_en (2
        # cores): it costs 2.0-2.3 us of CPU a token against 2.4-2.8 with parallelism off
        # (even at one thread), and with one worker per core one worker's Python work
        # (JSON, ids -> numpy, writing) overlaps another's tokenizing. The parent never
        # used the pool, so it starts fresh in each forked worker.
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        os.environ.setdefault("RAYON_NUM_THREADS", str(job.tokenizer_threads))
        tok = _TOKENIZER or load_tokenizer(args.tokenizer_path, args.uses_chat_template)
        builder = SampleBuilder(tok, job.info, args.encode_type, args.max_length,
                                args.overlong, args.qa_template, args.strict,
                                Fields(args.text_field, args.q_field, args.a_field,
                                       args.messages_field))
        sink = ShardSink(job.tmp_dir, k, job.dtype, job.info, args, builder.has_loss_mask)
        columns = {"pretrain": [args.text_field], "chat": [args.messages_field]}.get(
            args.encode_type, [args.q_field, args.a_field])

        def feed(records, where):
            if os.getppid() != job.parent_pid:
                os._exit(1)  # the parent was killed: stop rather than write for nobody
            sink.add(builder.encode(records, where))
            progress[k] = sink.stats.tokens + (sink.packer.pending_tokens if sink.packer else 0)

        for part in job.parts:
            for records, where in part_batches(part, args.batch_size, columns):
                feed(records, where)
        while inbox is not None:
            try:
                item = inbox.get(timeout=1.0)
            except queue.Empty:
                item = ((), ())  # a chance to notice a dead parent
            if item is None:
                break
            records, wheres = item
            feed(records, wheres.__getitem__)
        sink.add(builder.finish())
        shards = sink.close()
        progress[k] = sink.stats.tokens
        stats = sink.stats
        for name in ("records", "skipped_empty", "dropped_overlong", "truncated",
                     "samples_before_packing"):
            setattr(stats, name, getattr(builder.stats, name))
        results.put(("done", k, stats, shards))
    except LltError as e:
        results.put(("error", k, str(e)))
    except BaseException:  # noqa: BLE001 - a bug: send the whole traceback to the parent
        results.put(("error", k, "internal error in encoder worker:\n" + traceback.format_exc()))


def _prepare_output(corpus_dir: Path, name: str, overwrite: bool) -> list[Path]:
    """Check the corpus folder; return files of an earlier run to remove on success."""
    if corpus_dir.exists() and not corpus_dir.is_dir():
        raise LltError(f"--output_path/--corpus_name: {corpus_dir} exists and is not a folder")
    pattern = re.compile(rf"^{re.escape(name)}_\d+\.(bin|idx)$")
    old = sorted(f for f in corpus_dir.glob("*") if pattern.match(f.name)) if corpus_dir.is_dir() else []
    summary = corpus_dir / "summary.json"
    if summary.exists() and not overwrite:
        raise LltError(
            f"{corpus_dir} already holds a finished corpus ({len(old)} shard files and "
            "summary.json); pass --overwrite to replace it, or choose another --corpus_name")
    if old and not summary.exists():
        print(f"llt encode: {corpus_dir} holds {len(old)} shard files of an unfinished run "
              "(no summary.json); they will be replaced", file=sys.stderr)
    return old + ([summary] if summary.exists() else [])


def _finalize(corpus_dir: Path, name: str, shards: list[WrittenShard], old: list[Path]) -> list[dict]:
    """Swap the finished shards into place: old manifest first out, new manifest last in."""
    (corpus_dir / "summary.json").unlink(missing_ok=True)
    for f in old:
        f.unlink(missing_ok=True)
    entries = []
    for i, s in enumerate(shards):
        stem = f"{name}_{i}"
        os.replace(s.tmp_bin, corpus_dir / f"{stem}.bin")
        os.replace(s.tmp_idx, corpus_dir / f"{stem}.idx")  # the .idx last: it vouches for the .bin
        entries.append({
            "name": stem, "n_samples": s.n_samples, "n_tokens": s.n_tokens,
            "n_trained_tokens": s.n_trained,
            "bin_bytes": (corpus_dir / f"{stem}.bin").stat().st_size,
            "idx_bytes": (corpus_dir / f"{stem}.idx").stat().st_size,
            "bin_xxh3_128": s.bin_xxh3, "idx_xxh3_128": s.idx_xxh3,
        })
    return entries


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_encode(args: EncodeArgs, progress_bar: bool = True) -> dict:
    """Encode as `args` say; return the manifest that was written to summary.json."""
    global _TOKENIZER
    t0 = time.time()
    tok = load_tokenizer(args.tokenizer_path, args.uses_chat_template)
    info = TokenizerInfo.of(tok, args.tokenizer_path)
    info.require(args.encode_type, args.uses_chat_template)
    try:
        dtype = choose_dtype(args.save_dtype, info.vocab_size)
    except ValueError as e:
        raise LltError(f"{e} (--tokenizer_path {args.tokenizer_path})") from None
    inputs = find_inputs(args.input_path)
    corpus_dir = Path(args.output_path) / args.corpus_name
    old = _prepare_output(corpus_dir, args.corpus_name, args.overwrite)
    # Leftovers of a killed run are never trusted. This run writes into a folder of its
    # own, so a worker orphaned by a killed run can never write into this run's files.
    shutil.rmtree(corpus_dir / PARTIAL_DIR, ignore_errors=True)
    tmp_dir = corpus_dir / PARTIAL_DIR / f"run-{os.getpid()}-{time.time_ns()}"
    tmp_dir.mkdir(parents=True)

    n_workers = args.num_workers or _available_cores()
    groups = plan_parts([i for i in inputs if i[0] in ("jsonl", "parquet", "hf")], n_workers, args.split)
    streamed = bool(args.data_loader_path) or any(i[0] in ("json", "csv", "tsv") for i in inputs)
    n_procs = n_workers if streamed else max(1, len(groups))
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    results = ctx.Queue()
    progress = ctx.Array("q", n_procs, lock=False)
    inboxes = [ctx.Queue(_QUEUE_BATCHES) if streamed else None for _ in range(n_procs)]
    _TOKENIZER = tok
    procs = []
    for k in range(n_procs):
        job = _Job(args, info, dtype, tmp_dir, os.getpid(), groups[k] if k < len(groups) else [],
                   tokenizer_threads=max(2, -(-_available_cores() // n_procs)))
        procs.append(ctx.Process(target=_worker, args=(k, job, inboxes[k], results, progress),
                                 daemon=True, name=f"llt-encode-{k}"))
    from tqdm import tqdm

    # Objects alive now are shared copy-on-write with the workers; freezing them keeps
    # the workers' garbage collector from touching (and so copying) their pages.
    gc.freeze()
    for p in procs:  # fork before tqdm starts its monitor thread
        p.start()
    gc.unfreeze()
    bar = tqdm(desc=f"encode {args.corpus_name}", unit="tok", unit_scale=True,
               disable=not progress_bar, file=sys.stderr, smoothing=0.1)
    done: dict[int, tuple] = {}
    shown = 0

    def poll(timeout: float) -> None:
        nonlocal shown
        try:
            msg = results.get(timeout=timeout)
            if msg[0] == "error":
                raise LltError(msg[2])
            done[msg[1]] = msg
        except queue.Empty:
            pass
        for k, p in enumerate(procs):
            if k not in done and p.exitcode is not None and results.empty():
                time.sleep(0.2)  # its last message may still be in the pipe
                if results.empty():
                    raise LltError(f"encoder worker {k} died (exit code {p.exitcode}); "
                                   "out of memory?")
        total = sum(progress)
        bar.update(total - shown)
        shown = total

    try:
        if streamed:
            _feed(stream_records(inputs, args.data_loader_path), inboxes, args.batch_size, poll)
        while len(done) < n_procs:
            poll(0.25)
    except BaseException:
        for p in procs:
            p.kill()
        shutil.rmtree(corpus_dir / PARTIAL_DIR, ignore_errors=True)
        if not any(corpus_dir.iterdir()):
            corpus_dir.rmdir()  # it was made for this run: leave no trace
        raise
    finally:
        bar.close()
        _TOKENIZER = None
    for p in procs:
        p.join()

    stats = EncodeStats()
    shards: list[WrittenShard] = []
    for k in range(n_procs):
        stats.add(done[k][2])
        shards += done[k][3]
    entries = _finalize(corpus_dir, args.corpus_name, shards, old)
    shutil.rmtree(corpus_dir / PARTIAL_DIR, ignore_errors=True)
    seconds = time.time() - t0
    manifest = write_manifest(corpus_dir, args=asdict(args), info=info, dtype=dtype,
                              stats=stats, shards=entries, seconds=seconds)
    return manifest


def _feed(records, inboxes, batch_size: int, poll) -> None:
    """Send streamed records to the workers in batches, round robin; end with None."""
    batch, wheres, turn = [], [], 0

    def send(item) -> None:
        nonlocal turn
        box = inboxes[turn % len(inboxes)]
        turn += 1
        while True:
            try:
                box.put(item, timeout=0.25)
                return
            except queue.Full:
                poll(0)  # surfaces a worker's error instead of waiting on it forever

    for rec, where in records:
        batch.append(rec)
        wheres.append(where)
        if len(batch) == batch_size:
            send((batch, wheres))
            batch, wheres = [], []
            poll(0)
    if batch:
        send((batch, wheres))
    for box in inboxes:
        while True:
            try:
                box.put(None, timeout=0.25)
                break
            except queue.Full:
                poll(0)
