"""The GPU check script runs end to end on CPU with --tiny (what a GPU run does, small)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu_with_tiny(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--tiny", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    assert out["device"] == "cpu"
    check = out["logit_check"]
    assert check["ok"] and check["documents_checked"] >= 4 and check["max_abs_logit_error"] < 1e-4
    for mode in ("llt", "baseline"):
        r = out[mode]
        assert r["trained_tokens"] > 0 and 0 < r["trained_tokens"] <= r["input_tokens"]
        assert r["trained_tokens_per_second"] > 0 and r["achieved_tflops"] >= 0
    assert out["llt"]["micro_batch"] == 2 and out["baseline"]["grad_accum"] >= 1
    assert out["trained_tokens_per_second_ratio"] > 0
