"""Benchmark: `llt encode` throughput and memory against the tokenizer's own ceiling.

    python bench/encode.py                      # 10M and 64M tokens, Qwen2.5, wiki_en
    python bench/encode.py --sizes 10 --workdir /tmp/llt-bench

For each size, the wiki text (../shared/assets/data/wiki_en.jsonl) is repeated into a
JSONL file of about that many million Qwen2.5 tokens. Then, in the same run:

* ceiling: `tokenizers`' `encode_batch_fast` over the same texts, batches of 1,000, on
  all cores (its own thread pool), tokenizer loaded and texts in memory beforehand;
* llt: the whole `llt encode` command as a user runs it (a subprocess: interpreter
  start, imports, tokenizer load, reading JSON, writing and checksumming shards).

Machines here are noisy (+-10% run to run), so small sizes are measured several times,
ceiling and llt alternating, and medians compared. Printed as JSON: tokens/s of both, their ratio, and, from one more run of its own, the
encoder's peak memory: the largest single process (what `/usr/bin/time` reports) and
the whole process tree summed (RSS sampled every 0.1 s, PSS every second: PSS counts
pages the forked workers share with the parent once, RSS once per process).
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

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOKENIZER = SHARED / "assets/tokenizers/qwen2.5"
WIKI = SHARED / "assets/data/wiki_en.jsonl"


def make_input(path: Path, texts: list[str], tokens_per_copy: int, million: int) -> int:
    copies = max(1, round(million * 1e6 / tokens_per_copy))
    if not path.exists():
        lines = "".join(json.dumps({"text": t}) + "\n" for t in texts)
        with open(path, "w") as f:
            for _ in range(copies):
                f.write(lines)
    return copies


def ceiling(texts: list[str], copies: int) -> tuple[int, float]:
    import tokenizers

    os.environ.pop("TOKENIZERS_PARALLELISM", None)
    tk = tokenizers.Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    n, t0 = 0, time.perf_counter()
    for _ in range(copies):
        for i in range(0, len(texts), 1000):
            n += sum(len(e) for e in tk.encode_batch_fast(texts[i:i + 1000], add_special_tokens=False))
    return n, time.perf_counter() - t0


def run_encoder(src: Path, out: Path, sample_memory: bool, extra: tuple = (),
                tokenizer: Path = TOKENIZER) -> dict:
    """One `llt encode` subprocess: its tokens and wall time, or its peak memory."""
    import psutil

    cmd = [sys.executable, "-m", "llt", "encode", "--tokenizer_path", str(tokenizer),
           "--input_path", str(src), "--output_path", str(out), "--corpus_name", "bench",
           "--max_length", "4096", "--overwrite", *extra]
    t0 = time.perf_counter()
    # A clean environment: tokenizers marks its own process's env "no parallelism" once
    # its pool has run (the ceiling above), and a child would inherit that.
    env = {k: v for k, v in os.environ.items() if k not in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")}
    err = open(out / "encode.stderr", "w") if out.is_dir() else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    root = psutil.Process(proc.pid)
    peak_one = peak_rss = peak_pss = 0
    tick = 0
    while sample_memory and proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
            rss = [p.memory_info().rss for p in procs]
            peak_one, peak_rss = max(peak_one, *rss), max(peak_rss, sum(rss))
            if tick % 10 == 5:  # PSS walks page tables: every second, not to slow the run
                peak_pss = max(peak_pss, sum(p.memory_full_info().pss for p in procs))
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            pass
        tick += 1
        time.sleep(0.1)
    stdout = proc.stdout.read()
    proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode:
        log = (out / "encode.stderr").read_text()[-2000:] if out.is_dir() else ""
        raise SystemExit(f"llt encode failed ({proc.returncode}):\n{stdout}\n{log}")
    manifest = json.loads((out / "bench" / "summary.json").read_text())
    out = {"tokens": manifest["stats"]["tokens"], "wall_s": round(wall, 2), "stats": manifest["stats"]}
    if sample_memory:
        out = {"peak_rss_mb_largest_process": round(peak_one / 2**20),
               "peak_rss_mb_process_tree": round(peak_rss / 2**20),
               "peak_pss_mb_process_tree": round(peak_pss / 2**20)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 64], help="millions of tokens")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--repeats", type=int, default=None,
                    help="alternating ceiling/llt runs per size (default: 3 up to 16M tokens, else 1)")
    args = ap.parse_args()
    if not TOKENIZER.exists() or not WIKI.exists():
        raise SystemExit(f"needs {TOKENIZER} and {WIKI} (the ../shared assets)")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    texts = [json.loads(line)["text"] for line in open(WIKI)]
    # Tokens in one copy of the wiki text, to size the inputs.
    n_one, _ = ceiling(texts, 1)
    results = {"cores": len(os.sched_getaffinity(0)), "tokenizer": "qwen2.5", "runs": []}
    for million in args.sizes:
        src = work / f"wiki_{million}M.jsonl"
        copies = make_input(src, texts, n_one, million)
        # Ceiling and llt alternate, so drifts in machine load hit both; medians reported.
        repeats = args.repeats or (3 if million <= 16 else 1)
        ceilings, runs = [], []
        for _ in range(repeats):
            n, secs = ceiling(texts, copies)
            ceilings.append(n / secs)
            runs.append(run_encoder(src, work / "out", sample_memory=False))
        # Memory from a run of its own: sampling /proc costs CPU that the timed runs don't pay.
        memory = run_encoder(src, work / "out", sample_memory=True)
        ceiling_tps = statistics.median(ceilings)
        llt = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
        # Conservative: count only the text's tokens, not the EOS llt adds per document.
        llt_tps = n / llt["wall_s"]
        results["runs"].append({
            "million_tokens": million, "copies": copies, "repeats": repeats,
            "ceiling_tokens_per_s": round(ceiling_tps),
            "ceiling_tokens_per_s_each": [round(c) for c in ceilings],
            "llt_tokens_per_s": round(llt_tps),
            "llt_wall_s_each": [r["wall_s"] for r in runs],
            "ratio_to_ceiling": round(llt_tps / ceiling_tps, 3),
            "target_ratio": 0.85, "target_peak_rss_mb": 300,
            # the encoder also writes an EOS per document, which the ceiling does not count
            "eos_tokens_included": llt["tokens"] - n,
            **{k: v for k, v in llt.items() if k != "stats"}, **memory,
        })
        print(json.dumps(results["runs"][-1]), file=sys.stderr)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
