"""A release install works from any folder: build the wheel, install it into a fresh
virtual environment (no source tree on its path), and run the quickstart, a LoRA run and
the shipped-config lookups from an empty folder.

Slow (a venv with torch, ~1-2 min, then a CPU quickstart); needs the package registry,
as the install commands of the README do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds the wheel and installs it in a fresh virtual environment

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", "build", "dist", "llt-quickstart", "__pycache__", ".pytest_cache"}


def _clean_copy(dst: Path) -> Path:
    """The repository without build leftovers (a stale build/ would leak into the wheel);
    links are kept as links, as a clone has them."""
    def ignore(folder, names):
        return [n for n in names if n in SKIP or n.endswith(".egg-info")]
    shutil.copytree(ROOT, dst, symlinks=True, ignore=ignore)
    return dst


def _run(cmd, cwd, timeout=900, env=None):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_wheel_install_runs_quickstart_and_finds_shipped_configs_from_an_empty_folder(tmp_path):
    src = _clean_copy(tmp_path / "src")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src)],
         cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("llt-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    py, llt = venv / "bin" / "python", venv / "bin" / "llt"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    _run([py, "-m", "pip", "install", "-q", "torch==2.13.0", str(wheel)], cwd=tmp_path, timeout=1200, env=env)
    work = tmp_path / "empty"
    work.mkdir()

    where = _run([py, "-c", "import llt; print(llt.__file__)"], cwd=work, env=env).stdout.strip()
    assert str(venv) in where and str(ROOT) not in where

    r = _run([llt, "quickstart", "--records", "1000"], cwd=work, env=env)
    assert "[4/4] loss" in r.stdout and "held-out loss" in r.stdout
    runs = list((work / "llt-quickstart" / "runs").iterdir())
    assert len(runs) == 1 and list(runs[0].glob("checkpoint-*"))

    # A shipped recipe by its repository path, its configs/lora.json, and
    # --deepspeed_config_path auto, with no source tree.
    qs = work / "llt-quickstart"
    _run([llt, "train", "--config", "recipes/lora_sft.yaml", "--model_path", qs / "tiny-llama",
          "--data_path", qs / "shards" / "qa", "--deepspeed_config_path", "auto", "--use_cpu", "--max_steps", "2",
          "--output_path", work / "lora-runs", "--report_to", "none", "--disable_tqdm", "true"],
         cwd=work, env=env)
    lora_run = next((work / "lora-runs").iterdir())
    config = json.loads((lora_run / "llt_config.json").read_text())
    assert config["lora_args"] == {"use_lora": True, "lora_config_path": "configs/lora.json"}
    assert (lora_run / "checkpoint-2" / "adapter_config.json").is_file()

    probe = ("import torch; torch.cuda.is_available = lambda: True\n"
             "from llt.train.config import resolve_deepspeed\n"
             "from llt.resources import user_or_shipped\n"
             "for p in (resolve_deepspeed('auto'), resolve_deepspeed('zero3.json'),\n"
             "          user_or_shipped('configs/lora.json')):\n"
             "    print('PATH', p)")
    out = _run([py, "-c", probe], cwd=work, env=env).stdout  # deepspeed logs to stdout too
    paths = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("PATH ")]
    assert [Path(p).name for p in paths] == ["zero2.json", "zero3.json", "lora.json"]
    assert all(Path(p).is_file() and str(venv) in p for p in paths)
