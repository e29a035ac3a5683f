"""One encoder worker process: read its parts of the input (or batches streamed to it),
build samples, write its own shards, report its figures or its error to the parent."""

from __future__ import annotations

import json
import os
import queue
import signal
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from llt.encode.chat.encoder import ChatEncoder
from llt.encode.chat.rule import ChatOptions
from llt.encode.chat.template import ChatTemplate, load_template_source
from llt.encode.config import EncodeArgs
from llt.encode.builders import make_builder
from llt.encode.builders.base import Fields
from llt.encode.sink import ShardSink
from llt.encode.hub import dataset_batches
from llt.encode.sources import Part, part_batches
from llt.encode.tokenizer_info import TokenizerInfo
from llt.errors import LltError
from llt.tokenizer_loader import load_tokenizer

# Set by the parent just before it forks the workers, so they inherit the loaded
# tokenizer and the compiled, fitted chat template for free (copy-on-write) instead of
# each building them again.
INHERITED_TOKENIZER = None
INHERITED_CHAT = None


@dataclass
class WorkerJob:
    """Everything a worker needs; picklable for the spawn start method."""

    args: EncodeArgs
    info: TokenizerInfo
    dtype: str
    tmp_dir: Path
    parent_pid: int = 0
    parts: list[Part] = field(default_factory=list)
    tokenizer_threads: int = 2
    chat_date: str | None = None  # fixed once by the parent, so every worker writes the same date


def chat_encoder(tok, args: EncodeArgs, date: str | None) -> ChatEncoder:
    """The chat encoder `args` describe (the parent builds one first, to fail early)."""
    source = load_template_source(tok, args.chat_template)
    kwargs = json.loads(args.chat_template_kwargs) if args.chat_template_kwargs else None
    return ChatEncoder(ChatTemplate(tok, source, kwargs, date), ChatOptions(args.train_turns, args.unrendered))


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this worker when the parent dies (kill -9 included).

    Without it an orphaned worker blocks forever on its queue (it holds the pipe's write
    end itself, so it never sees EOF). Elsewhere the per-batch `getppid` check is all.

    Ctrl-C and SIGTERM are ignored: they reach the whole process group, and the parent
    alone decides, killing the workers as it cleans up; a worker that died of one first
    would be reported as a crash, and one that raised would race the parent's cleanup.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _shared_fingerprint(shared, parent_pid: int):
    value, ready = shared

    def get() -> str:
        while not ready.wait(1.0):
            if os.getppid() != parent_pid:
                os._exit(1)  # the parent died before it could say
        return value.value.decode()

    return get


def encode_worker(k: int, job: WorkerJob, inbox, results, progress, fingerprint=None) -> None:
    """Encode this worker's parts and streamed batches; report stats or an error.

    `fingerprint`: (shared bytes, event) the parent fills with the tokenizer fingerprint
    once the workers run; None when `job.info` has it."""
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
        tok = INHERITED_TOKENIZER or load_tokenizer(args.tokenizer_path)
        builder = make_builder(args.encode_type, tok, job.info, args.max_length, args.overlong, args.qa_template,
                               args.strict, Fields(args.text_field, args.q_field, args.a_field, args.messages_field,
                                                   args.tools_field, args.prompt_field, args.chosen_field,
                                                   args.rejected_field, args.completion_field, args.label_field,
                                                   args.margin_field),
                               (INHERITED_CHAT or chat_encoder(tok, args, job.chat_date)) if job.chat_date else None)
        sink = ShardSink(job.tmp_dir, k, job.dtype, job.info, args, builder.has_loss_mask,
                         _shared_fingerprint(fingerprint, job.parent_pid) if fingerprint else None)
        columns = args.columns

        def feed(records, where):
            if os.getppid() != job.parent_pid:
                os._exit(1)  # the parent was killed: stop rather than write for nobody
            sink.add(builder.encode(records, where))
            progress[k] = sink.stats.tokens + (sink.packer.pending_tokens if sink.packer else 0)

        for part in job.parts:
            read = dataset_batches if part.kind in ("dataset", "stream") else part_batches
            for records, where in read(part, args.batch_size, columns):
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
        for name in ("records", "skipped_empty", "dropped_overlong", "dropped_nothing_trained", "truncated",
                     "samples_before_packing", "skipped_unrendered", "turn_samples", "extra_prompt_tokens"):
            setattr(stats, name, getattr(builder.stats, name))
        results.put(("done", k, stats, shards))
    except LltError as e:
        results.put(("error", k, str(e)))
    except BaseException:  # noqa: BLE001 - a bug: send the whole traceback to the parent
        results.put(("error", k, "internal error in encoder worker:\n" + traceback.format_exc()))
