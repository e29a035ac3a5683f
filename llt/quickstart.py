"""`llt quickstart`: the README's first command, offline, in seconds.

    llt quickstart [--out llt-quickstart]

Generates a small dataset and a tokenizer (nothing is downloaded), encodes it as a packed
`qa` corpus and a `pretrain` corpus with `llt encode`, verifies both, and shows a decoded
sample with its trained tokens marked.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llt.toy import build_tokenizer, toy_records, write_jsonl


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="llt quickstart", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="llt-quickstart", help="folder for everything it makes")
    ap.add_argument("--records", type=int, default=4000)
    args = ap.parse_args(argv)
    out = Path(args.out)
    from llt.cli import main as llt

    docs, qa = toy_records(args.records)
    text_path = write_jsonl(out / "data" / "text.jsonl", docs)
    qa_path = write_jsonl(out / "data" / "qa.jsonl", qa)
    build_tokenizer(docs + [r["q"] + " " + r["a"] for r in qa], out / "tokenizer")
    print(f"[1/3] generated {len(docs):,} documents and {len(qa):,} q/a pairs in {out / 'data'}, "
          f"and a tokenizer in {out / 'tokenizer'}\n")
    common = ["--tokenizer_path", str(out / "tokenizer"), "--output_path", str(out / "shards"),
              "--overwrite"]
    for name, path, kind, extra in (("text", text_path, "pretrain", ["--max_length", "256"]),
                                    ("qa", qa_path, "qa", ["--max_length", "128", "--merge_data"])):
        rc = llt(["encode", "--input_path", str(path), "--corpus_name", name,
                  "--encode_type", kind, *common, *extra])
        if rc:
            return rc
    print("\n[2/3] checking every shard")
    if llt(["verify", str(out / "shards")]):
        return 1
    print("\n[3/3] what the model will learn from the qa corpus")
    llt(["inspect", str(out / "shards" / "qa"), "-n", "1"])
    print(f"\nDone. Shards: {out / 'shards'}/<corpus>/<corpus>_<i>.bin/.idx with summary.json.")
    return 0
