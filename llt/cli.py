"""The `llt` command: one subcommand per job.

    llt encode --help      user data -> token shards
    llt inspect PATH       counts, length histogram, decoded samples with trained tokens marked
    llt inspect PATH --check
                           a chat corpus's trained turns against the chat template at generation
    llt verify PATH        checksums, headers, id ranges of every shard
    llt train --help       train on shards (recipes/sft.py on one device; use
                           `accelerate launch recipes/sft.py` for several)
    llt dpo --help         preference tuning (DPO, IPO, SimPO, ORPO) on pairs from
                           `llt encode --encode_type preference` (recipes/dpo.py)
    llt reward --help      a reward model (Bradley-Terry) on the same pairs (recipes/reward.py)
    llt kto --help         KTO on labelled examples from `llt encode --encode_type kto`, or on
                           pairs (recipes/kto.py)
    llt grpo --help        online RL (GRPO, DAPO, Dr. GRPO) on prompts with your reward
                           functions (recipes/grpo.py)
    llt score MODEL --input_path pairs.jsonl
                           a reward model's accuracy and each pair's rewards
    llt launch CMD...      run a launcher (accelerate, torchrun, deepspeed) so that SIGTERM/SIGUSR1
                           end with the checkpoint saved before it exits (for schedulers)
    llt export CKPT --out DIR
                           a standalone HF model folder from a checkpoint (LoRA merged,
                           DeepSpeed ZeRO consolidated)
    llt generate MODEL --prompt TEXT
                           generate from a model, checkpoint or run folder
    llt plot RUN [RUN...]  several runs' loss curves on one figure
    llt quickstart         the README's first command: a small end-to-end run, offline
"""

from __future__ import annotations

import sys

from llt.errors import LltError
from llt.interrupt import exit_code, exit_on_signals, received

USAGE = __doc__.split("\n\n", 1)[1]


def _encode(argv: list[str]) -> int:
    from pathlib import Path

    from llt.flags import parse_dataclass
    from llt.encode.config import EncodeArgs
    from llt.encode.job import run_encode
    from llt.encode.summary import describe

    args = parse_dataclass(EncodeArgs, argv, "llt encode",
                           "Tokenize user data into llt shards (format: docs/format.md).")
    manifest = run_encode(args)
    print(describe(manifest, Path(args.output_path) / args.corpus_name))
    return 0


# Each command's `main(argv)`, imported only when that command runs (start-up stays fast).
MODULES = {"inspect": "llt.shards.inspect:inspect_main", "verify": "llt.shards.verify:verify_main",
           "train": "llt.train.sft", "dpo": "llt.train.preference", "reward": "llt.train.reward",
           "kto": "llt.train.kto", "grpo": "llt.train.grpo", "score": "llt.score", "launch": "llt.launch", "export": "llt.runs.export", "generate": "llt.runs.generate",
           "plot": "llt.runs.plot", "quickstart": "llt.quickstart"}


def _run_module(target: str, argv: list[str]) -> int:
    import importlib

    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func or "main")(argv)


def _inspect(argv: list[str]) -> int:
    if "--check" in argv:  # re-encodes records: the encoder's stage, which inspect may not import
        return _run_module("llt.encode.chat.check:check_main", argv)
    return _run_module(MODULES["inspect"], argv)


# Commands that give SIGTERM (and SIGINT) a meaning of their own: training saves a
# preemption checkpoint (llt.train.callbacks), `llt launch` forwards them.
SIGNALS_OWN = {"train", "dpo", "reward", "kto", "grpo", "launch", "quickstart"}
# What an interrupted command left, said after "interrupted".
INTERRUPTED = {"encode": "nothing was left under a final shard name",
               "export": "nothing was left under --out"}

COMMANDS = {"encode": _encode, **{name: (lambda argv, t=t: _run_module(t, argv)) for name, t in MODULES.items()},
            "inspect": _inspect}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: llt COMMAND [ARGS]\n\n" + USAGE, file=sys.stderr if argv else sys.stdout)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    try:
        if argv[0] in SIGNALS_OWN:
            return COMMANDS[argv[0]](argv[1:])
        with exit_on_signals():
            return COMMANDS[argv[0]](argv[1:])
    except LltError as e:
        print(f"llt {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        return _interrupted(argv[0], e)
    except Exception as e:
        # Ctrl-C inside a C extension's import comes out as that import's error (numpy:
        # "PyCapsule_Import could not import module"), the interrupt lost or as its cause.
        cause = _interrupt_in_chain(e) or received()
        if cause is None:
            raise
        return _interrupted(argv[0], cause)


def _interrupted(command: str, e: KeyboardInterrupt) -> int:
    note = getattr(e, "note", None) or INTERRUPTED.get(command, "")
    print(f"llt {command}: interrupted{'; ' + note if note else ''}", file=sys.stderr)
    return exit_code(e)


def _interrupt_in_chain(e: BaseException) -> KeyboardInterrupt | None:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
