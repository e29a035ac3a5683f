"""The bench scripts run end to end, small: the GPU check on CPU with --tiny (what a GPU run
does), the chat encoder's speed layers at builder level."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs bench/gpu.sh in processes

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


def test_chat_layers_measures_every_layer_at_builder_level():
    shared = ROOT.parent / "shared" / "assets"
    if not (shared / "tokenizers" / "qwen2.5").exists():
        pytest.skip(f"needs the Qwen2.5 tokenizer and alpaca set under {shared}")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "chat_layers.py"), "--level", "builder",
                           "--conversations", "40", "--repeats", "1", "--templates", "qwen2.5"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    figures = out["templates"]["qwen2.5"]
    assert out["level"] == "builder" and set(figures) == {
        "all", "no_plans", "no_joins", "no_newline_joins", "no_attr_cache", "no_shared_context"}
    assert all(f["cpu_s"] > 0 and f["slowdown"] > 0 for f in figures.values())
    assert figures["all"]["slowdown"] == 1.0
