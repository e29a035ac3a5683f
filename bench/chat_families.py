"""Per chat-template family: samples written, trained share and extra prompt tokens.

    python bench/chat_families.py

Encodes the conversations of tests/chat_families.py (system prompt, two tool rounds,
reasoning where the template renders it, a follow-up) with each family's published template
and a tiny BPE with its control tokens, for --train_turns all and last, and prints a
Markdown table (docs/chat.md).
"""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from chat_families import families, build_family_tokenizer
from llt.encode.config import EncodeArgs
from llt.encode.job import run_encode
from llt.toy import write_jsonl
rows = []
for name, fam in families().items():
    d = Path(tempfile.mkdtemp())
    build_family_tokenizer(fam, d / "tok")
    src = write_jsonl(d / "c.jsonl", fam.records)
    for turns in ("all", "last"):
        m = run_encode(EncodeArgs(tokenizer_path=str(d / "tok"), output_path=str(d / "out"), corpus_name=turns,
                                  input_path=[str(src)], encode_type="chat", max_length=100000, num_workers=1,
                                  chat_date="2026-01-01", train_turns=turns), progress_bar=False)
        s = m["stats"]
        rows.append((name, turns, len(fam.records), sum(1 for r in fam.records for x in r["messages"] if x["role"] == "assistant"),
                     s["samples"], s["tokens"], s["trained_tokens"], round(100 * s["trained_fraction"], 1), s["extra_prompt_tokens"],
                     round(100 * s["extra_prompt_tokens"] / s["tokens"], 1)))
print("| family | --train_turns | conversations | assistant turns | samples | tokens | trained | trained % | extra prompt tokens | extra % |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows: print("| " + " | ".join(f"{x:,}" if isinstance(x, int) else str(x) for x in r) + " |")
