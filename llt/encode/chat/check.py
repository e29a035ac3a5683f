"""`llt inspect CORPUS --check`: do a chat corpus's trained turns match inference?

    llt inspect out/chat --check            # the first 50 records of the corpus's inputs
    llt inspect out/chat --check -n 500 --input_path other.jsonl

For a sample of the records the corpus was encoded from, the encoder's samples (as `llt
encode` builds them with the corpus's recorded template, keyword arguments, date and
flags) are compared, turn by turn, with what generation does: transformers' own renderer
(`render_jinja_template`, not the encoder's direct render) gives the prompt for each
assistant turn, the tokenizer's own call tokenizes it, and the turn is the rendered
conversation after that prompt. Each difference is printed with the record, the message,
and the first differing token; the exit code is 1 if there is any. The samples are also
looked up, by hash, among the corpus's documents, which says whether the corpus on disk
was written by the same code and settings.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
from pathlib import Path

import numpy as np

from llt.encode.chat.encoder import ChatEncoder
from llt.encode.chat.rule import ChatOptions, first_part, generated_text, generation_prompt
from llt.encode.chat.template import ChatTemplate
from llt.encode.chat.messages import Message, RecordError, read_conversation
from llt.errors import LltError


def _records(manifest: dict, inputs: list[str] | None, n: int):
    """The first `n` records of the corpus's inputs (or of `inputs`), with their `where`."""
    from llt.encode.sources import find_inputs, part_batches, plan_parts, stream_records

    args = manifest["args"]
    paths = inputs or args["input_path"]
    if not paths and not args.get("data_loader_path"):
        raise LltError("the corpus was encoded from --dataset; give the records to check with --input_path FILE")
    found = find_inputs(paths)
    cols = [args["messages_field"], args["tools_field"] + "?"]

    def batches():
        for group in plan_parts([i for i in found if i[0] in ("jsonl", "parquet", "hf")], 1, args["split"], []):
            for part in group:
                for recs, where in part_batches(part, 256, cols):
                    yield from ((r, where(k)) for k, r in enumerate(recs))
        yield from stream_records(found, None if inputs else args.get("data_loader_path"))

    return list(itertools.islice(batches(), n))


def _reference(tpl: ChatTemplate, tok, msgs: list[Message], tools, train_turns: str) -> list:
    """(prompt ids, turn ids, message index) per trained turn, as generation renders them."""
    from transformers.utils.chat_template_utils import render_jinja_template

    dicts = tpl.to_dicts(msgs)
    names = {**tok.special_tokens_map, **{k: v for k, v in tpl.context.items() if k != "strftime_now"}}

    def render(part, gen):
        text = render_jinja_template([part], tools=tools, chat_template=tpl.source,
                                     add_generation_prompt=gen, **names)[0][0]
        return text.replace(_today(), tpl.date)  # transformers writes today where asked

    turns = [i for i, m in enumerate(msgs) if m.role == "assistant" and (m.content or m.reasoning or m.tool_calls)]
    out = []
    for i in turns[-1:] if train_turns == "last" else turns:
        prompt = generation_prompt(tpl, dicts[:i], tools, dicts[i]) if not i else render(dicts[:i], True)
        turn = generated_text(tpl, prompt, render(dicts[: i + 1], False),
                              lambda i=i: render(dicts[:i], False) if i else "", first_part(msgs[i]))
        out.append((tok(prompt, add_special_tokens=False)["input_ids"],
                    tok(turn, add_special_tokens=False)["input_ids"], i))
    return out


def _today() -> str:
    import datetime

    return datetime.date.today().isoformat()


def _corpus_hashes(corpus: Path, manifest: dict) -> set[bytes]:
    from llt.shards.reader import ShardReader

    out = set()
    for shard in manifest["shards"]:
        r = ShardReader(corpus / f"{shard['name']}.idx")
        for i in range(len(r)):
            toks, docs = np.asarray(r.tokens(i), np.int64), r.doc_starts(i).tolist() + [len(r.tokens(i))]
            for lo, hi in zip(docs[:-1], docs[1:]):
                out.add(hashlib.blake2b(toks[lo:hi].tobytes(), digest_size=16).digest())
    return out


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_corpus(corpus: Path, manifest: dict, n: int, inputs: list[str] | None) -> int:
    """Print the comparison for `n` records; return the number of differences."""
    from llt.encode.builders.base import Fields
    from llt.encode.builders.chat import ChatBuilder
    from llt.encode.tokenizer_info import TokenizerInfo
    from llt.tokenizer_loader import load_tokenizer

    chat, args = manifest.get("chat"), manifest["args"]
    if not chat or manifest["encode_type"] != "chat":
        raise LltError(f"{corpus}: not a chat corpus (encode_type {manifest['encode_type']}); --check "
                       "compares chat turns with the chat template")
    tok = load_tokenizer(manifest["tokenizer"]["path"], transformers=True)
    tpl = ChatTemplate(tok, chat["template"], chat["kwargs"], chat["date"])
    builder = ChatBuilder(tok, TokenizerInfo.of(tok, manifest["tokenizer"]["path"]), 10**9,
                          names=Fields(messages=args["messages_field"], tools=args["tools_field"]),
                          chat=ChatEncoder(tpl, ChatOptions(chat["train_turns"], args["unrendered"])))
    on_disk = _corpus_hashes(corpus, manifest)
    differences = turns = found = samples = records = 0
    for rec, where in _records(manifest, inputs, n):
        records += 1
        batch = builder.encode([rec], lambda k: where)
        conv = read_conversation(rec, args["messages_field"], args["tools_field"], RecordError)
        want = _reference(tpl, tok, conv.messages, conv.tools, chat["train_turns"])
        got = []
        for s in range(len(batch) if batch else 0):
            lo, hi = int(batch.lengths[:s].sum()), int(batch.lengths[:s + 1].sum())
            toks = batch.tokens[lo:hi].astype(np.int64)
            samples += 1
            found += hashlib.blake2b(toks.tobytes(), digest_size=16).digest() in on_disk
            spans = batch.spans[int(batch.span_counts[:s].sum()):int(batch.span_counts[:s + 1].sum())]
            got += [(toks[:a].tolist(), toks[a:b].tolist()) for a, b in spans]
        turns += len(want)
        for k, (w_prompt, w_turn, i) in enumerate(want):
            g_prompt, g_turn = got[k] if k < len(got) else ([], [])
            for what, g, w in (("prompt", g_prompt, w_prompt), ("trained turn", g_turn, w_turn)):
                if g != w:
                    differences += 1
                    d = _first_difference(g, w)
                    print(f"{where}: message {i}: the {what} differs at token {d}: encoder "
                          f"{tok.decode(g[d:d + 12])!r} vs generation {tok.decode(w[d:d + 12])!r}")
        if len(got) != len(want):
            differences += 1
            print(f"{where}: {len(got)} trained turns, generation has {len(want)}")
    print(f"checked {turns:,} turns of {records:,} records against the chat template at "
          f"generation time: {differences:,} difference(s); {found:,} of their {samples:,} samples "
          f"are in {corpus}{'' if found == samples else ' (the corpus was written with other settings or code)'}")
    return differences


def check_main(argv: list[str]) -> int:
    from llt.shards.manifest import read_manifest

    ap = argparse.ArgumentParser(prog="llt inspect --check", description=__doc__.split("\n\n")[0])
    ap.add_argument("path", help="a chat corpus folder")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("-n", "--num_samples", type=int, default=50, help="records to check")
    ap.add_argument("--input_path", nargs="+", help="records to check instead of the corpus's inputs")
    args = ap.parse_args(argv)
    corpus = Path(args.path)
    return 1 if check_corpus(corpus, read_manifest(corpus), args.num_samples, args.input_path) else 0
