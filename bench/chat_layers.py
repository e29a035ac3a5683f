"""Benchmark: what each speed layer of the chat encoder is worth, whole command, with it and
without it, in the same run.

    python bench/chat_layers.py                          # 10,000 conversations, both templates
    python bench/chat_layers.py --conversations 4000 --repeats 2
    python bench/chat_layers.py --level builder --conversations 2000   # the chat builder alone

Two levels. `command` (the default) times the whole `llt encode` command a user runs;
`builder` times, in a fresh process per variant, the CPU seconds of the chat builder alone
(`ChatBuilder.samples` over the conversations, one tokenizer thread): the part of the
command the layers act on, without process start, tokenizer load, reading and writing, so a
layer's worth is not lost in the whole command's noise on a shared 2-core machine.

The chat encoder's rule (`llt.encode.chat.rule`) is correct on its own; the layers around
it only make it faster. Each variant runs `llt encode --encode_type chat` as a user does
(a subprocess) with one layer switched off by a patch applied before the command starts:

* `no_plans`: every conversation through the rule itself (no shape plans);
* `no_joins`: every prompt and turn tokenized as a text of its own (`chat.joins` off);
* `no_newline_joins`: joins after hard special tokens only;
* `no_attr_cache`: the stock sandbox's attribute checks on every access (`CachedSandbox` off);
* `no_shared_context`: jinja's own `Template.render` (a new context with copied globals
  per render) instead of rendering into a prepared shared context.

Variants alternate within each repeat; the figure is each variant's median time over the
full encoder's (`slowdown`: 1.10 means the layer saves 9% of the time measured); `spread` is
(max - min) / median of a variant's repeats, the noise to read it against. The data are
`bench/chat_encode.py`'s conversations (alpaca_eval rounds, Qwen2.5 tokenizer).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from chat_encode import ALPACA, FIXTURES, conversations  # noqa: E402
from encode import TOKENIZER  # noqa: E402

VARIANTS = ["all", "no_plans", "no_joins", "no_newline_joins", "no_attr_cache",
            "no_shared_context"]


def switch_off(variant: str) -> None:
    """Patch one layer out of this process (the encoder's workers are forked from it)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from llt.encode.chat import joins, plans, template
    from llt.encode.chat.environment import CachedSandbox

    if variant == "no_plans":
        plans.ShapePlans.samples = lambda self, conv, start=0: None
    elif variant == "no_joins":
        joins.Joiner._cut = lambda self, segs, start, j, counts: None
    elif variant == "no_newline_joins":
        joins.newline_joins_exact = lambda tok: False
    elif variant == "no_attr_cache":
        CachedSandbox.getattr = ImmutableSandboxedEnvironment.getattr
    elif variant == "no_shared_context":
        def render(self, messages, tools, gen):
            return self.compiled.render(**self.context, messages=messages, tools=tools, add_generation_prompt=gen,
                                        documents=None)
        template.ChatTemplate.render = render


def child(variant: str, argv: list[str]) -> int:
    switch_off(variant)
    from llt.cli import main

    return main(argv)


def builder_child(variant: str, src: str, template: str | None) -> None:
    """Print the CPU seconds the chat builder takes over the conversations in `src`."""
    os.environ["TOKENIZERS_PARALLELISM"], os.environ["RAYON_NUM_THREADS"] = "true", "1"
    switch_off(variant)
    from llt.encode.builders import make_builder
    from llt.encode.builders.base import Fields
    from llt.encode.chat.encoder import ChatEncoder
    from llt.encode.chat.rule import ChatOptions
    from llt.encode.chat.template import ChatTemplate, load_template_source
    from llt.encode.tokenizer_info import TokenizerInfo
    from llt.tokenizer_loader import load_tokenizer

    tok = load_tokenizer(str(TOKENIZER))
    chat = ChatEncoder(ChatTemplate(tok, load_template_source(tok, template), None, "2026-01-01"), ChatOptions())
    builder = make_builder("chat", tok, TokenizerInfo.of(tok, str(TOKENIZER), fingerprint=False), 4096,
                           names=Fields(), chat=chat)
    records = [json.loads(line) for line in open(src)]
    t0 = time.process_time()
    for i in range(0, len(records), 256):
        builder.samples(records[i:i + 256], lambda k: f"record {k}")
    print(time.process_time() - t0)


def run_builder(variant: str, src: Path, template: str | None) -> float:
    cmd = [sys.executable, __file__, "--_builder", variant, str(src), template or ""]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{variant}: the builder failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return float(proc.stdout.split()[-1])


def run(variant: str, src: Path, out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, __file__, "--_child", variant, "--", "encode", "--tokenizer_path", str(TOKENIZER),
           "--input_path", str(src), "--output_path", str(out), "--corpus_name", "bench", "--max_length", "4096",
           "--overwrite", "--encode_type", "chat", "--chat_date", "2026-01-01", *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{variant}: llt encode failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conversations", type=int, default=10_000)
    ap.add_argument("--templates", nargs="+", default=["qwen2.5", "qwen3-reasoning"])
    ap.add_argument("--variants", nargs="+", default=VARIANTS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--level", choices=["command", "builder"], default="command")
    ap.add_argument("--_child", default=None)
    ap.add_argument("--_builder", nargs=3, default=None)
    args, rest = ap.parse_known_args()
    if args._child:
        sys.exit(child(args._child, rest[1:] if rest[:1] == ["--"] else rest))
    if args._builder:
        variant, src, template = args._builder
        sys.exit(builder_child(variant, src, template or None))
    if not TOKENIZER.exists() or not ALPACA.exists():
        raise SystemExit(f"needs {TOKENIZER} and {ALPACA} (the ../shared assets)")
    work = Path(tempfile.mkdtemp(prefix="llt-bench-layers-"))
    results = {"cores": len(os.sched_getaffinity(0)), "conversations": args.conversations, "level": args.level,
               "templates": {}}
    for name in args.templates:
        template = str(FIXTURES / "qwen3.jinja") if name == "qwen3-reasoning" else None
        src = work / f"{name}.jsonl"
        src.write_text("".join(json.dumps(c) + "\n" for c in conversations(args.conversations, template is not None)))
        extra = ["--chat_template", template] if template else []
        walls = {v: [] for v in args.variants}
        for _ in range(args.repeats):
            for v in args.variants:
                walls[v].append(run(v, src, work / "out", extra) if args.level == "command"
                                else run_builder(v, src, template))
        base = statistics.median(walls["all"])
        unit = "wall_s" if args.level == "command" else "cpu_s"
        results["templates"][name] = {v: {unit: round(statistics.median(w), 2),
                                          "spread": round((max(w) - min(w)) / statistics.median(w), 3),
                                          "slowdown": round(statistics.median(w) / base, 3)}
                                      for v, w in walls.items()}
        print(json.dumps({name: results["templates"][name]}), file=sys.stderr)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
