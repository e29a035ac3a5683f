"""Several nodes on one machine (issue 24): two launcher agents with `--nnodes 2` and a c10d
rendezvous on 127.0.0.1 are two nodes. The pre-flight check refuses nodes that differ,
`--load_ckpt_path auto` resumes a resubmitted command, and the Slurm batch script derives
each node's rank and requeues after a time-limit signal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llt.train.preflight import differences
from tests.conftest import train
from tests.procs import ROOT, RECIPES, env, free_port

SBATCH = ROOT / "configs" / "slurm" / "llt_multinode.sbatch"


def _flags(model, corpus, out, *extra):
    return ["--model_path", str(model), "--data_path", str(corpus), "--output_path", str(out),
            "--per_device_train_batch_size", "4", "--logging_steps", "1", "--learning_rate", "1e-3",
            "--use_cpu", "--deepspeed_config_path", "none", "--report_to", "none", "--disable_tqdm", "true",
            "--seed", "0", *extra]


def test_differences_name_each_field_that_differs():
    first = {"node": "node 0", "llt": "0.1.0 abc", "config": {"args.learning_rate": 0.001, "data_args.data_path": ["a"]},
             "tokenizer": "t", "data": "d", "world size": 2, "resume from": None}
    other = {**first, "node": "node 1", "llt": "0.1.0 def",
             "config": {"args.learning_rate": 0.002, "data_args.data_path": ["b"]}}
    assert differences(other, first) == ["llt 0.1.0 def vs 0.1.0 abc", "--learning_rate 0.002 vs 0.001",
                                         "--data_path [\"b\"] vs [\"a\"]"]
    assert differences(first, first) == []


def test_load_ckpt_path_auto_starts_fresh_then_resumes_the_same_run(tmp_path, tiny_model_dir, toy_corpora):
    """The command a requeued job runs twice: first a fresh start, then a resume from the
    run's newest resumable checkpoint, written on in the same run folder."""
    from llt.runs.folder import checkpoints

    out = tmp_path / "runs"
    cmd = _flags(tiny_model_dir, toy_corpora["qa_packed"], out, "--save_name", "job", "--save_steps", "2",
                 "--save_optimizer", "--load_ckpt_path", "auto")
    assert train([*cmd, "--max_steps", "4"]) == 0
    (run,) = out.iterdir()
    assert [c.name for c in checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    assert train([*cmd, "--max_steps", "6"]) == 0
    assert list(out.iterdir()) == [run]  # the same run folder, not a new one
    assert [c.name for c in checkpoints(run)][-1] == "checkpoint-6"
    history = json.loads((run / "loss_history.json").read_text())
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------- two nodes (slow tier)

def _node(rank: int, port: int, args: list, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
           "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
           "--rdzv_id", "llt-test", str(RECIPES["sft"]), *args]
    return subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["config", "data"])
def test_a_node_that_differs_is_refused_naming_both(tmp_path, tiny_model_dir, toy_corpora, what):
    port = free_port()
    base = _flags(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "runs", "--max_steps", "2")
    other = (_flags(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "runs", "--max_steps", "2",
                    "--learning_rate", "2e-3") if what == "config"
             else _flags(tiny_model_dir, toy_corpora["qa"], tmp_path / "runs", "--max_steps", "2"))
    t0 = time.monotonic()
    nodes = [_node(0, port, base), _node(1, port, other)]
    outs = [p.communicate(timeout=300) for p in nodes]
    took = time.monotonic() - t0
    want = "--learning_rate 0.002 vs 0.001" if what == "config" else "--data_path"
    for p, (out, err) in zip(nodes, outs):
        assert p.returncode != 0
        line = next((ln for ln in err.splitlines() if "differs from" in ln), None)
        assert line is not None, err[-3000:]
        assert "node 1 (host" in line and "differs from node 0 (host" in line and want in line, line
    assert not any((tmp_path / "runs").glob("*/checkpoint-*"))
    print(f"nodes differing in {what}: both refused in {took:.1f} s")


def _fake_slurm(folder: Path, nodes: int) -> dict:
    """`srun` and `scontrol` as far as the batch script uses them: srun starts its command
    once per node with the variables Slurm sets there (forwarding USR1 to them, as srun
    does); scontrol names the nodes and records a requeue."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f"""#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for node in $(seq 0 $(({nodes} - 1))); do
    SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 SLURM_STEP_ID=0 "$@" &
    pids+=($!)
done
trap 'kill -USR1 "${{pids[@]}}" 2>/dev/null' USR1
rc=0
for p in "${{pids[@]}}"; do
    while :; do wait "$p"; r=$?; kill -0 "$p" 2>/dev/null || break; done
    [ "$r" -gt "$rc" ] && rc=$r
done
exit $rc
""")
    (bin_dir / "scontrol").write_text(f"""#!/bin/bash
case "$1 $2" in
  "show hostnames") for i in $(seq 1 {nodes}); do echo localhost; done ;;
  requeue*) echo "$2" >> {folder}/requeued ;;
esac
""")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    e = env(SLURM_JOB_ID="4242", SLURM_NNODES=str(nodes), SLURM_JOB_NODELIST=f"node[1-{nodes}]",
            GPUS_PER_NODE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    e["PATH"] = f"{bin_dir}:{Path(sys.executable).parent}:{e['PATH']}"
    return e


@pytest.mark.slow
def test_the_slurm_script_derives_ranks_saves_on_the_time_limit_signal_and_requeues(
        tmp_path, tiny_model_dir, toy_corpora):
    """The batch script under a fake srun/scontrol with Slurm's variables for two nodes:
    both nodes train as one world, USR1 (the time limit) ends in a resumable checkpoint and
    a requeue, and the requeued command resumes from it to the end."""
    from llt.runs.folder import checkpoints

    out = tmp_path / "runs"
    flags = _flags(tiny_model_dir, toy_corpora["qa_packed"], out, "--save_name", "job", "--max_steps", "400",
                   "--save_steps", "1000")
    e = _fake_slurm(tmp_path, 2)
    log_file = tmp_path / "job.log"
    with open(log_file, "w") as sink:
        job = subprocess.Popen(["bash", str(SBATCH), *map(str, flags)], cwd=ROOT, env=e, text=True,
                               stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while log_file.read_text().count("'loss'") < 2:  # rank 0 has logged two steps: training runs
        assert job.poll() is None, log_file.read_text()[-4000:]
        assert time.monotonic() < deadline, log_file.read_text()[-4000:]
        time.sleep(0.2)
    job.send_signal(signal.SIGUSR1)  # Slurm's --signal=B:USR1 goes to the batch shell
    job.wait(timeout=300)
    log = log_file.read_text()
    assert job.returncode == 0, log[-4000:]
    assert (tmp_path / "requeued").read_text().split() == ["4242"], log[-4000:]
    assert log.count("stopped by SIGUSR1") >= 1, log[-4000:]
    (run,) = out.iterdir()
    saved = checkpoints(run)
    assert saved and (saved[-1] / "llt_data_state.json").is_file()
    step = int(saved[-1].name.split("-")[1])
    assert step < 400

    # the requeued job: the same command, two nodes again, to the end
    flags[flags.index("--max_steps") + 1] = str(step + 2)
    e["MASTER_PORT"] = str(free_port())
    log = subprocess.run(["bash", str(SBATCH), *map(str, flags)], cwd=ROOT, env=e, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300).stdout
    assert f"resuming from {saved[-1]}" in log, log[-4000:]
    assert [c.name for c in checkpoints(run)][-1] == f"checkpoint-{step + 2}", log[-4000:]
    assert list(out.iterdir()) == [run]
    assert shutil.which("bash")
    assert os.path.exists(SBATCH)


def _two_nodes(args: list, launcher: str = "torchrun", mounts: tuple[Path, Path, Path] | None = None,
               llt_launch: bool = False, **popen) -> list[subprocess.Popen]:
    """Two nodes as two launcher agents on 127.0.0.1; with `mounts` (disk seen as, node 0's
    disk, node 1's disk) each node gets its own folder at the same path (a mount namespace);
    with `llt_launch`, each agent runs under `llt launch` (as the Slurm script runs it)."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        if launcher == "torchrun":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                   "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
                   "--rdzv_id", "llt-test"]
        else:
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
                   "--machine_rank", str(rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
                   "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no"]
        cmd = [*cmd, str(RECIPES["sft"]), *map(str, args)]
        if llt_launch:
            cmd = [sys.executable, "-m", "llt", "launch", *cmd]
        if mounts is not None:
            seen_as, *disks = mounts
            cmd = ["unshare", "-m", "bash", "-c", 'mount --bind "$1" "$2" && shift 2 && exec "$@"', "_",
                   str(disks[rank]), str(seen_as), *cmd]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env(), text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, **popen))
    return procs


def _finish(procs, timeout=600) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each, once all have ended."""
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append((p.returncode, stdout, stderr))
    return out


def _losses(run_root: Path) -> list[float]:
    (run,) = [p for p in run_root.iterdir() if p.is_dir()]
    return [e["loss"] for e in json.loads((run / "loss_history.json").read_text()) if "loss" in e]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_nodes_of_one_process_train_as_one_node_of_two(tmp_path, tiny_model_dir, toy_corpora, launcher):
    from tests.procs import launcher as launch_cmd, run

    args = _flags(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "one", "--max_steps", "6")
    run([*launch_cmd("torchrun", nproc=2), *args])
    args = _flags(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "two", "--max_steps", "6")
    results = _finish(_two_nodes(args, launcher))
    for rc, out, err in results:
        assert rc == 0, err[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == 6 and one == two  # to the last bit


def _unshare_works(tmp_path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    r = subprocess.run(["unshare", "-m", "bash", "-c", f"mount --bind {probe} {probe}"], capture_output=True)
    return r.returncode == 0


@pytest.mark.slow
def test_node_local_disks_get_a_copy_on_every_node_and_resume_on_both(tmp_path, tiny_model_dir, toy_corpora):
    """Each node's own disk at one path: every node keeps a whole copy of each checkpoint,
    a resubmitted command resumes on both from their own copies and trains as a run that
    was never stopped; a node that lost its copy is named; --save_on_each_node is refused."""
    from llt.runs.folder import checkpoints

    if shutil.which("unshare") is None or not _unshare_works(tmp_path):
        pytest.skip("needs unshare -m and bind mounts (root): each node's own disk at one path")
    disk, node0, node1 = tmp_path / "disk", tmp_path / "node0", tmp_path / "node1"
    for d in (disk, node0, node1):
        d.mkdir()
    # a constant learning rate: a 4-step run's schedule is then the first 4 steps of a 6-step one
    common = ["--save_name", "job", "--save_steps", "2", "--save_optimizer", "--load_ckpt_path", "auto",
              "--lr_scheduler_type", "constant"]
    args = _flags(tiny_model_dir, toy_corpora["qa_packed"], disk, *common)
    t0 = time.monotonic()
    for rc, out, err in _finish(_two_nodes([*args, "--max_steps", "4"], mounts=(disk, node0, node1))):
        assert rc == 0, err[-3000:]
    took = time.monotonic() - t0
    copies = [{str(p.relative_to(n)): p.read_bytes() for p in sorted(n.rglob("checkpoint-*/**/*")) if p.is_file()}
              for n in (node0, node1)]
    assert copies[0] and copies[0] == copies[1]  # the same files, byte for byte, on both disks
    assert {Path(k).name for k in copies[1]} >= {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt",
                                                 "llt_data_state.json", "trainer_state.json"}
    (run1,) = node1.iterdir()
    assert [c.name for c in checkpoints(run1)] == ["checkpoint-2", "checkpoint-4"]

    # resubmitted: both nodes resume from their own checkpoint-4; steps 5-6 as a straight run's
    results = _finish(_two_nodes([*args, "--max_steps", "6"], mounts=(disk, node0, node1)))
    for rc, out, err in results:
        assert rc == 0 and "checkpoint-4" in err + out, err[-3000:]
    straight = _flags(tiny_model_dir, toy_corpora["qa_packed"], tmp_path / "straight", *common, "--max_steps", "6")
    for rc, out, err in _finish(_two_nodes(straight)):
        assert rc == 0, err[-3000:]
    # rank 0 writes the loss history, on whichever node c10d's rendezvous gave rank 0
    ranked0 = next(n for n in (node0, node1) if list(n.glob("*/loss_history.json")))
    assert _losses(ranked0)[-2:] == _losses(tmp_path / "straight")[-2:]
    assert [c.name for c in checkpoints(run1)][-1] == "checkpoint-6"

    for rc, out, err in _finish(_two_nodes([*args, "--max_steps", "8", "--save_on_each_node"],
                                           mounts=(disk, node0, node1))):
        assert rc != 0 and "--save_on_each_node: drop the flag" in err, err[-3000:]
    # node 1 lost its newest copy: it would resume elsewhere, and both nodes are told which
    shutil.rmtree(run1 / "checkpoint-6")
    for rc, out, err in _finish(_two_nodes([*args, "--max_steps", "8"], mounts=(disk, node0, node1))):
        assert rc != 0 and "differs from node 0" in err and "checkpoint-4" in err and "checkpoint-6" in err, \
            err[-3000:]
    print(f"node-local disks: 4 steps, 2 checkpoints copied to both nodes in {took:.1f} s")


@pytest.mark.slow
def test_sigterm_to_one_nodes_llt_launch_stops_both_with_a_checkpoint_and_the_resubmission_resumes(
        tmp_path, tiny_model_dir, toy_corpora):
    """A scheduler that signals one node only (a node drained, a per-node time limit): the
    stop flag is all-reduced at every step end, so both nodes stop at the same step and save
    one resumable checkpoint; the same command resubmitted resumes from it on both."""
    from llt.runs.folder import checkpoints

    out = tmp_path / "runs"
    args = _flags(tiny_model_dir, toy_corpora["qa_packed"], out, "--save_name", "job", "--save_steps", "3",
                  "--save_optimizer", "--load_ckpt_path", "auto", "--max_steps", "400")
    procs = _two_nodes(args, llt_launch=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (list(out.glob("*/checkpoint-*")) and all(p.poll() is None for p in procs)):
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, \
            [p.communicate()[1][-2000:] for p in procs]
        time.sleep(0.05)
    t0 = time.monotonic()
    procs[1].send_signal(signal.SIGTERM)  # node 1's llt launch only
    results = _finish(procs, timeout=300)
    took = time.monotonic() - t0
    for rc, stdout, stderr in results:
        assert rc == 0, stderr[-3000:]
    # rank 0 reports the stop (c10d's rendezvous numbers the ranks, so it may run on either node)
    said = "".join(stdout for _, stdout, _ in results)
    assert "stopped by SIGTERM after step" in said or "stopped by a signal on another rank after step" in said, \
        said[-3000:]
    (run,) = out.iterdir()
    stopped = int(checkpoints(run)[-1].name.split("-")[1])
    assert 0 < stopped < 400 and (run / f"checkpoint-{stopped}" / "llt_data_state.json").is_file()
    assert not list(run.glob(".partial/checkpoint-*"))
    args[args.index("--max_steps") + 1] = str(stopped + 2)
    resumed = _finish(_two_nodes(args, llt_launch=True))
    for rc, stdout, stderr in resumed:
        assert rc == 0 and f"resuming from {run / f'checkpoint-{stopped}'}" in stdout + stderr, stderr[-3000:]
    assert checkpoints(run)[-1].name == f"checkpoint-{stopped + 2}"
    print(f"SIGTERM to node 1's llt launch: both nodes stopped at step {stopped} with its checkpoint, "
          f"{took:.1f} s after the signal; the resubmission resumed from it on both")


def _tree(pid: int) -> list[int]:
    """`pid` and every process below it (a launcher agent starts its workers in sessions of
    their own, so its process group is not all of a node)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _signal_tree(pid: int, sig: int) -> None:
    for p in _tree(pid):
        try:
            os.kill(p, sig)
        except OSError:
            pass


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill -9", "frozen"])
def test_a_dead_node_ends_the_other_within_node_timeout_and_the_run_resumes(tmp_path, tiny_model_dir, toy_corpora,
                                                                            how):
    """Node 1 killed (kill -9 of its agent and processes: its connections close) or frozen
    (SIGSTOP: its connections stay open and nothing answers, as when a machine or its network
    is lost): node 0 exits within --node_timeout and a few seconds, naming what is gone,
    and the resubmitted command resumes from the newest checkpoint."""
    from llt.runs.folder import checkpoints

    out, bound = tmp_path / "runs", 20
    args = _flags(tiny_model_dir, toy_corpora["qa_packed"], out, "--save_name", "job", "--save_steps", "3",
                  "--save_optimizer", "--load_ckpt_path", "auto", "--max_steps", "100000",
                  "--node_timeout", str(bound))
    procs = _two_nodes(args, start_new_session=True)
    logs: list[str] = []
    drain = [threading.Thread(target=lambda: logs.extend(procs[0].stderr), daemon=True),
             threading.Thread(target=procs[0].stdout.read, daemon=True),
             threading.Thread(target=procs[1].communicate, daemon=True)]
    for t in drain:
        t.start()
    deadline = time.monotonic() + 300
    while not list(out.glob("*/checkpoint-*")):
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, "".join(logs)[-3000:]
        time.sleep(0.05)
    t0 = time.monotonic()
    _signal_tree(procs[1].pid, signal.SIGKILL if how == "kill -9" else signal.SIGSTOP)
    try:
        procs[0].wait(timeout=bound + 60)
    except subprocess.TimeoutExpired:
        _signal_tree(procs[0].pid, signal.SIGKILL)
        raise AssertionError("".join(logs)[-4000:]) from None
    finally:
        _signal_tree(procs[1].pid, signal.SIGKILL)
    took = time.monotonic() - t0
    drain[0].join(10)
    err = "".join(logs)
    assert procs[0].returncode != 0, err[-3000:]
    if how == "frozen":  # only the watchdog can tell: nothing closes
        assert "has not answered for" in err and "--node_timeout" in err, err[-3000:]
    assert took < bound + 30, (took, err[-3000:])
    (run,) = out.iterdir()
    newest = int(checkpoints(run)[-1].name.split("-")[1])
    args[args.index("--max_steps") + 1] = str(newest + 2)
    for rc, stdout, stderr in _finish(_two_nodes(args)):
        assert rc == 0 and f"resuming from {run / f'checkpoint-{newest}'}" in stdout + stderr, stderr[-3000:]
    print(f"{how} of node 1: node 0 exited after {took:.1f} s (--node_timeout {bound}); "
          f"resumed from checkpoint-{newest}")
