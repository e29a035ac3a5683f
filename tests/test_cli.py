"""The real `llt` command line: the seed's flag spelling, clean errors, the quickstart."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from llt.shards.reader import ShardReader


# A traceback frame in llt's own code or a recipe: llt's errors never show one.
LLT_FRAME = re.compile(r'File "[^"]*([/\\\\]llt[/\\\\]|recipes[/\\\\]\w+\.py)')


def llt(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "llt", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def llt_here(capsys, *args) -> SimpleNamespace:
    """The `llt` command in this process (what the console script calls): exit code and output."""
    from llt.cli import main

    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)


def test_seed_flags_work_as_the_seed_readme_describes(tmp_path, tiny_tok_dir, capsys):
    loader = tmp_path / "data_loader.py"
    loader.write_text("def data_loader():\n    for i in range(40):\n"
                      "        yield {'q': f'What is {i} plus 1?', 'a': f'It is {i + 1}.'}\n")
    r = llt_here(capsys, "encode", "--tokenizer_path", tiny_tok_dir, "--data_loader_path", loader,
                 "--corpus_name", "seed", "--encode_type", "qa", "--output_path", tmp_path / "out",
            "--max_length", 512, "--merge_data", "True", "--save_dtype", "int32",
            "--tokens_per_file", "5e8")
    assert r.returncode == 0, r.stderr
    assert "samples" in r.stdout and "packing" in r.stdout
    shards = sorted((tmp_path / "out" / "seed").glob("seed_*.idx"))
    assert shards and shards[0].name == "seed_0.idx"
    reader = ShardReader(shards[0])
    assert reader.dtype.itemsize == 4 and reader.header["packed"] is True


def test_errors_are_one_clear_line_without_traceback(tmp_path, tiny_tok_dir, capsys):
    r = llt_here(capsys, "encode", "--tokenizer_path", tiny_tok_dir, "--data_loader_path", tmp_path / "none.py",
                 "--corpus_name", "c", "--output_path", tmp_path / "out")
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1].startswith("llt encode: error: --data_loader_path")
    assert "Traceback" not in r.stderr and ", done" not in r.stderr  # a progress line, if any, says stopped
    r = llt_here(capsys, "encode", "--tokenizer_path", tiny_tok_dir, "--corpus_name", "c",
                 "--output_path", tmp_path / "out", "--input_path", "x.jsonl", "--no_such_flag", "1")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "llt encode: error: unrecognized arguments: --no_such_flag 1 (see --help)"]
    r = llt_here(capsys, "encode", "--tokenizer_path", tiny_tok_dir, "--corpus_name", "c",
                 "--output_path", tmp_path / "out", "--input_path", "x.jsonl", "--num_workers", "two")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "llt encode: error: --num_workers: two is not an integer"]


@pytest.mark.slow
def test_quickstart_encodes_trains_and_says_where_the_outputs_are(tmp_path):
    import re

    from transformers import AutoModelForCausalLM

    r = llt("quickstart", "--out", tmp_path / "qs", "--records", 1000, "--epochs", 3)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "OK" in r.stdout and "[[" in r.stdout
    assert (tmp_path / "qs" / "shards" / "qa" / "summary.json").exists()
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", r.stdout).groups())
    assert last < 0.6 * first
    ckpt = Path(re.search(r"checkpoint +(\S+)", r.stdout).group(1))
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    assert model.config.num_hidden_layers == 4
    assert Path(re.search(r"loss plot +(\S+)", r.stdout).group(1)).is_file()
    held_out = float(re.search(r"held-out loss ([\d.]+)", r.stdout).group(1))
    assert held_out < first
    assert (ckpt.parent / "llt_data.json").is_file() and list((ckpt.parent / "runs").rglob("events.*"))
    assert r.stdout.rstrip().splitlines()[-1].strip()  # the generated answer follows the command


@pytest.mark.slow
@pytest.mark.parametrize("name", ["python", "llt", "accelerate", "torchrun"])
def test_a_misspelled_flag_is_one_line_with_the_closest_flags_under_every_launcher(tmp_path, name):
    from tests.procs import launcher, run

    head = [sys.executable, "-m", "llt", "train"] if name == "llt" else launcher(name)
    proc = run([*head, "--model_path", "m", "--data_path", "d", "--lerning_rate", "1e-4"], timeout=300,
               check=False, cwd=tmp_path)
    assert proc.returncode != 0
    # What llt controls: its one line, printed once by llt itself (a line of its own), and no
    # traceback through llt's code. What a launcher adds after its child fails is the
    # launcher's (accelerate 1.16 re-raises it as a RuntimeError quoting the child's last line).
    # The launcher's re-raise comes after the child's own output; it may quote several of the
    # child's lines (accelerate 1.16 with a library warning before ours), so count before it.
    child = proc.stderr.split("RuntimeError:")[0].split("Traceback (most recent call last)")[0]
    ours = [line for line in child.splitlines() if line.startswith("llt train: error:")]
    assert ours == ["llt train: error: unknown flag --lerning_rate; did you mean --learning_rate? (see --help)"]
    assert not LLT_FRAME.search(proc.stderr), proc.stderr
    assert "HfArgumentParser" not in proc.stderr and "Some specified arguments" not in proc.stderr


@pytest.mark.slow
def test_progress_written_to_a_pipe_is_plain_lines_not_carriage_returns(tmp_path, tiny_model_dir, toy_corpora,
                                                                        tiny_tok_dir):
    import os

    from llt.toy import toy_records, write_jsonl

    env = dict(os.environ, LLT_PROGRESS_SECONDS="0")
    train = subprocess.run([sys.executable, "-m", "llt", "train", "--model_path", str(tiny_model_dir),
                            "--data_path", str(toy_corpora["qa"]), "--output_path", str(tmp_path / "runs"),
                            "--use_cpu", "--report_to", "none", "--deepspeed_config_path", "none",
                            "--max_steps", "3"], capture_output=True, text=True, timeout=600, env=env)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "\r" not in train.stderr + train.stdout
    assert [line for line in train.stderr.splitlines() if line.startswith("llt: step")][-1].startswith(
        "llt: step 3/3 (100%)")
    data = write_jsonl(tmp_path / "t.jsonl", toy_records(50)[0])
    enc = subprocess.run([sys.executable, "-m", "llt", "encode", "--tokenizer_path", str(tiny_tok_dir),
                          "--input_path", str(data), "--output_path", str(tmp_path / "out"), "--corpus_name", "c"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert enc.returncode == 0, enc.stderr[-3000:]
    assert "\r" not in enc.stderr
    assert re.search(r"^encode c: [\d.]+k? tok \([\d.]+[kM]? tok/s, \d+ s\), done$", enc.stderr, re.M)
