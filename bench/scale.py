"""Benchmark: a rank's memory and start-up against the number of samples in the corpus.

    python bench/scale.py                           # 1k and 20M samples
    python bench/scale.py --sizes 1000 20000000 200000000 --length 8
    python bench/scale.py --sizes 1000 100000 --steps 2      # quick (the test's run)

For each size, a synthetic pretraining corpus is written straight to the shard format
(random ids, `--length` tokens a sample, no tokenizer run) with its summary.json, then
the same `llt train` command (a tiny Llama, `--max_steps`, verification on, 10% held out,
shuffled) runs in a fresh process. Measured per size, from outside the process:

* `peak_anon_mb`: the peak of its anonymous resident memory (RssAnon, sampled every
  10 ms): what the rank allocates; the memory-mapped shards are page cache, shared by the
  node's ranks and not counted;
* `first_step_s`: wall time from launch to the start of the first training step
  (imports, verification of every shard, datasets, model, plan).

The baseline is the smallest size in the same run; the figures are the growth over it:
`bytes_per_sample` (peak anonymous growth / added samples) and `startup_extra_s`.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Runs `llt train` and prints the time the first training step starts.
CHILD = """
import json, os, sys, time
from llt.train import trainer as T
orig = T.LltTrainer.training_step
def step(self, *a, **k):
    if not getattr(step, "seen", False):
        step.seen = True
        print("LLT_FIRST_STEP", time.time(), file=sys.stderr, flush=True)
    return orig(self, *a, **k)
T.LltTrainer.training_step = step
from llt.train.sft import main
sys.exit(main(sys.argv[1:]))
"""


def write_corpus(folder: Path, n: int, length: int, vocab: int, fingerprint: str,
                 shard_samples: int) -> dict:
    from llt.shards.synthetic import write_synthetic_corpus

    shards = write_synthetic_corpus(folder, n, length, vocab, fingerprint, shard_samples)["shards"]
    return {"samples": n, "tokens": n * length, "shards": len(shards),
            "bytes_on_disk": sum(x["bin_bytes"] + x["idx_bytes"] for x in shards)}


def rss_anon(pid: int) -> int:
    """Anonymous resident bytes of `pid` and its children (DataLoader workers)."""
    total = 0
    pids = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(k) for k in kids]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def run_train(corpus: Path, model: Path, out: Path, steps: int, threads: int) -> dict:
    argv = [sys.executable, "-c", CHILD, "--model_path", str(model), "--data_path", str(corpus),
            "--output_path", str(out), "--max_steps", str(steps), "--per_device_train_batch_size", "4",
            "--eval_split", "0.1", "--eval_strategy", "no", "--save_strategy", "no", "--use_cpu", "true",
            "--deepspeed_config_path", "none", "--report_to", "none", "--logging_steps", "1",
            "--dataloader_num_workers", "0", "--disable_tqdm", "true"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    start = time.time()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon(proc.pid))
            time.sleep(0.01)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    _, err = proc.communicate()
    stop.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"llt train failed on {corpus}:\n{err[-3000:]}")
    first = [float(line.split()[1]) for line in err.splitlines() if line.startswith("LLT_FIRST_STEP")]
    return {"peak_anon_mb": round(peak[0] / 2**20, 1), "first_step_s": round(first[0] - start, 2),
            "total_s": round(time.time() - start, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 20_000_000])
    ap.add_argument("--length", type=int, default=64, help="tokens per sample (20M x 64 = 1.28B tokens)")
    ap.add_argument("--shard_samples", type=int, default=5_000_000)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="keep corpora here (default: a temp dir)")
    args = ap.parse_args(argv)
    from llt.shards.fingerprint import vocab_fingerprint
    from llt.toy import build_tiny_model, build_tokenizer, toy_records

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        texts, _ = toy_records(200)
        tok = build_tokenizer(texts, work / "model")
        build_tiny_model(work / "model", len(tok), hidden=32, layers=1, heads=2, max_positions=max(64, args.length))
        fp = vocab_fingerprint(tok)
        rows = []
        for n in sorted(args.sizes):
            corpus = work / f"corpus_{n}"
            t = time.time()
            info = write_corpus(corpus, n, args.length, len(tok), fp, args.shard_samples)
            info["write_s"] = round(time.time() - t, 1)
            info.update(run_train(corpus, work / "model", work / f"run_{n}", args.steps, args.threads))
            rows.append(info)
            print(json.dumps(info), file=sys.stderr, flush=True)
            if args.workdir is None:
                for f in corpus.iterdir():
                    f.unlink()
        base = rows[0]
        for r in rows[1:]:
            added = r["samples"] - base["samples"]
            r["bytes_per_sample"] = round((r["peak_anon_mb"] - base["peak_anon_mb"]) * 2**20 / added, 3)
            r["startup_extra_s"] = round(r["first_step_s"] - base["first_step_s"], 2)
        print(json.dumps({"length": args.length, "steps": args.steps, "threads": args.threads,
                          "baseline_samples": base["samples"], "sizes": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
