"""`llt encode`: user data -> tokenized, sharded `.bin`/`.idx` files.

    llt encode --tokenizer_path TOK --input_path data.jsonl --encode_type pretrain \\
        --output_path out --corpus_name wiki --max_length 2048

Worker processes (one per core, `llt.encode.worker`) each tokenize batches of records and
write their own shards, so nothing per token crosses a process boundary and memory stays
flat. The job has three steps: `start_workers` (checks, output folder, fork),
`collect` (feed streamed records, poll progress and errors) and `finish` (rename the
shards into place, write the manifest). Shards are written under `.part` names in
`<corpus>/.llt-partial/` and moved to their final names (`<corpus>_<i>.bin/.idx`, the
`.idx` last) only when every worker has finished; the `summary.json` manifest comes last
of all. A corpus folder without `summary.json` is an unfinished run: the next run with the
same command discards it and starts over.
"""

from __future__ import annotations

import datetime
import gc
import hashlib
import json
import multiprocessing as mp
import os
import queue
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llt.encode import worker
from llt.encode.config import EncodeArgs
from llt.encode.builders.base import EncodeStats
from llt.encode.sources import find_inputs, plan_parts, stream_records
from llt.encode.summary import write_manifest
from llt.encode.tokenizer_info import TokenizerInfo
from llt.errors import LltError
from llt.interrupt import deferred
from llt.shards.fingerprint import vocab_fingerprint
from llt.shards.format import choose_dtype
from llt.shards.manifest import PARTIAL_DIR
from llt.shards.writer import WrittenShard
from llt.tokenizer_loader import load_tokenizer

_QUEUE_BATCHES = 4  # streamed batches buffered per worker: bounds the parent's memory


@dataclass
class _Run:
    """A started encode: its workers and the channels to them."""

    args: EncodeArgs
    info: TokenizerInfo
    dtype: str
    corpus_dir: Path
    old_files: list[Path]
    procs: list
    inboxes: list
    results: object
    progress: object
    streamed: bool
    inputs: list
    started: float
    chat: dict | None = None  # the chat template section of summary.json
    shared: tuple = ()  # the fingerprint's shared memory and event: alive while spawned workers start


def run_encode(args: EncodeArgs, progress_bar: bool = True) -> dict:
    """Encode as `args` say; return the manifest that was written to summary.json."""
    run = start_workers(args)
    try:
        done = collect(run, progress_bar)
    except BaseException:
        _abandon(run)
        raise
    return finish(run, done)


def start_workers(args: EncodeArgs) -> _Run:
    """Check the tokenizer, inputs and output folder, then fork the workers."""
    t0 = time.time()
    tok = load_tokenizer(args.tokenizer_path)
    info = TokenizerInfo.of(tok, args.tokenizer_path, fingerprint=False)  # computed below, once forked
    info.require(args.encode_type, args.uses_chat_template)
    try:
        dtype = choose_dtype(args.save_dtype, info.vocab_size)
    except ValueError as e:
        raise LltError(f"{e} (--tokenizer_path {args.tokenizer_path})") from None
    chat, encoder = _chat_section(tok, args, info)
    inputs = find_inputs(args.input_path)
    corpus_dir = Path(args.output_path) / args.corpus_name
    old = _prepare_output(corpus_dir, args.corpus_name, args.overwrite)
    # Leftovers of a killed run are never trusted. This run writes into a folder of its
    # own, so a worker orphaned by a killed run can never write into this run's files.
    shutil.rmtree(corpus_dir / PARTIAL_DIR, ignore_errors=True)
    tmp_dir = corpus_dir / PARTIAL_DIR / f"run-{os.getpid()}-{time.time_ns()}"
    made = not corpus_dir.exists()
    tmp_dir.mkdir(parents=True)
    try:
        return _start(args, tok, info, dtype, chat, encoder, inputs, corpus_dir, old, tmp_dir, t0)
    except BaseException:  # an error or Ctrl-C while loading a dataset: leave no trace
        with deferred():
            _remove_partial(corpus_dir, made)
        raise


def _start(args, tok, info, dtype, chat, encoder, inputs, corpus_dir, old, tmp_dir, t0) -> _Run:
    n_workers = args.num_workers or _available_cores()
    loaded, streams = hub_parts(args, inputs, n_workers)
    groups = plan_parts([i for i in inputs if i[0] in ("jsonl", "parquet", "hf")], n_workers, args.split, loaded)
    for i, part in enumerate(streams):  # one stream shard a worker, in order
        if i >= len(groups):
            groups.append([])
        groups[i].append(part)
    streamed = bool(args.data_loader_path) or any(i[0] in ("json", "csv", "tsv") for i in inputs)
    n_procs = n_workers if streamed else max(1, len(groups))
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    results = ctx.Queue()
    progress = ctx.Array("q", n_procs, lock=False)
    inboxes = [ctx.Queue(_QUEUE_BATCHES) if streamed else None for _ in range(n_procs)]
    fingerprint = (ctx.Array("c", 64, lock=False), ctx.Event())
    procs = []
    for k in range(n_procs):
        job = worker.WorkerJob(args, info, dtype, tmp_dir, os.getpid(), groups[k] if k < len(groups) else [],
                               tokenizer_threads=max(2, -(-_available_cores() // n_procs)),
                               chat_date=chat and chat["date"])
        procs.append(ctx.Process(target=worker.encode_worker, daemon=True, name=f"llt-encode-{k}",
                                 args=(k, job, inboxes[k], results, progress, fingerprint)))
    _fork(procs, tok, encoder, info, fingerprint)
    return _Run(args, info, dtype, corpus_dir, old, procs, inboxes, results, progress, streamed, inputs, t0, chat,
                fingerprint)


def _fork(procs: list, tok, encoder, info: TokenizerInfo, fingerprint: tuple) -> None:
    """Start the workers (they inherit the tokenizer and chat encoder), then compute the
    tokenizer fingerprint, the one thing of the parent's they wait for (in their shard
    headers, at close): while they read and tokenize, not before they start."""
    worker.INHERITED_TOKENIZER, worker.INHERITED_CHAT = tok, encoder
    # Objects alive now are shared copy-on-write with the workers; freezing them keeps
    # the workers' garbage collector from touching (and so copying) their pages.
    gc.freeze()
    try:
        for p in procs:  # fork before tqdm starts its monitor thread
            p.start()
        info.fingerprint = vocab_fingerprint(tok)
        fingerprint[0].value = info.fingerprint.encode()
        fingerprint[1].set()
    except BaseException:
        for p in procs:
            if p.pid is not None:  # started (Ctrl-C may land between two forks)
                p.kill()
        raise
    finally:
        gc.unfreeze()
        worker.INHERITED_TOKENIZER = worker.INHERITED_CHAT = None


def _chat_section(tok, args: EncodeArgs, info: TokenizerInfo):
    """The chat template's section of summary.json and the encoder the workers inherit;
    (None, None) when the encode renders no template. Built here once: a bad template
    fails before any work."""
    # preference records may be strings or messages: the template is used when there is one
    if not (args.uses_chat_template or (args.encode_type in ("preference", "kto")
                                        and (info.has_chat_template or args.chat_template))):
        return None, None
    date = args.chat_date or datetime.date.today().isoformat()
    encoder = worker.chat_encoder(tok, args, date)
    template = encoder.template
    return {"template": template.source, "template_file": args.chat_template,
            "template_sha256": hashlib.sha256(template.source.encode()).hexdigest(),
            "kwargs": json.loads(args.chat_template_kwargs or "{}"), "date": date,
            "style": asdict(template.style), "train_turns": args.train_turns}, encoder


def hub_parts(args: EncodeArgs, inputs: list[tuple[str, str]], workers: int) -> tuple[list, list]:
    """The parts of `--dataset` and of URL inputs: row ranges to share out, and streams."""
    from llt.encode.hub import DatasetSpec, dataset_parts, url_spec

    specs = [url_spec(path, args.split, args.streaming) for kind, path in inputs if kind == "url"]
    if args.dataset:
        specs.append(DatasetSpec(args.dataset, args.dataset_config, args.split, args.revision,
                                 tuple(args.data_files), args.streaming))
    loaded, streams = [], []
    for spec in specs:
        units, parts = dataset_parts(spec, workers)
        loaded += units
        streams += parts
    return loaded, streams


def collect(run: _Run, progress_bar: bool = True) -> dict[int, tuple]:
    """Feed streamed records to the workers and wait for each one's result, with a
    progress bar in tokens; a worker's error or death is raised here."""
    from llt.progress import progress

    bar = progress(f"encode {run.args.corpus_name}", "tok", enabled=progress_bar, smoothing=0.1)
    done: dict[int, tuple] = {}
    shown = 0

    def poll(timeout: float) -> None:
        nonlocal shown
        try:
            msg = run.results.get(timeout=timeout)
            if msg[0] == "error":
                raise LltError(msg[2])
            done[msg[1]] = msg
        except queue.Empty:
            pass
        _check_alive(run, done)
        total = sum(run.progress)
        bar.update(total - shown)
        shown = total

    finished = False
    try:
        if run.streamed:
            _feed(stream_records(run.inputs, run.args.data_loader_path), run.inboxes,
                  run.args.batch_size, poll)
        while len(done) < len(run.procs):
            poll(0.25)
        finished = True
    finally:
        # A log line saying "done" above an error would be read as success.
        bar.close() if finished or not hasattr(bar, "stop") else bar.stop()
    for p in run.procs:
        p.join()
    return done


def finish(run: _Run, done: dict[int, tuple]) -> dict:
    """Rename every worker's shards into place and write the manifest last."""
    stats = EncodeStats()
    shards: list[WrittenShard] = []
    for k in range(len(run.procs)):
        stats.add(done[k][2])
        shards += done[k][3]
    # Renames and the manifest take milliseconds; a signal meanwhile is raised after them,
    # so the folder is never left with final names and no summary.json.
    with deferred(note=f"after the corpus was complete: {run.corpus_dir} (summary.json written)"):
        entries = _finalize(run.corpus_dir, run.args.corpus_name, shards, run.old_files)
        shutil.rmtree(run.corpus_dir / PARTIAL_DIR, ignore_errors=True)
        return write_manifest(run.corpus_dir, args=asdict(run.args), info=run.info, dtype=run.dtype,
                              stats=stats, shards=entries, seconds=time.time() - run.started, chat=run.chat)


def _check_alive(run: _Run, done: dict) -> None:
    for k, p in enumerate(run.procs):
        if k not in done and p.exitcode is not None and run.results.empty():
            time.sleep(0.2)  # its last message may still be in the pipe
            if run.results.empty():
                raise LltError(f"encoder worker {k} died (exit code {p.exitcode}); out of memory?")


def _abandon(run: _Run) -> None:
    """A failed or interrupted run: stop the workers and leave no trace of this run (a
    second Ctrl-C waits for this: it takes milliseconds)."""
    with deferred():
        for p in run.procs:
            p.kill()
        # The parent holds both ends of each queue: a feeder thread blocked writing to a
        # killed worker's full pipe would hold the exit forever (Python joins those
        # threads at exit). Dropping what they hold is right: nobody will read it.
        for q in [*run.inboxes, run.results]:
            if q is not None:
                q.cancel_join_thread()
        for p in run.procs:
            p.join(timeout=5)
        _remove_partial(run.corpus_dir, made=True)


def _remove_partial(corpus_dir: Path, made: bool) -> None:
    """Remove this run's partial folder, and the corpus folder when it is left empty."""
    shutil.rmtree(corpus_dir / PARTIAL_DIR, ignore_errors=True)
    if made and corpus_dir.is_dir() and not any(corpus_dir.iterdir()):
        corpus_dir.rmdir()  # it was made for this run


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
