"""The pre-flight check of a run on several processes or nodes: before any data work,
every rank says what it is about to run, and a difference stops every rank with one line
naming the node and what differs.

Nodes of one job can drift apart in ways nothing else notices until hours later, or
never: a node with another checkout of the code, a recipe edited between two `srun`s,
another data folder or tokenizer, a launcher that gave two nodes the same rank, or (with
`--load_ckpt_path auto` on node-local disks) nodes that found different checkpoints.
Compared here: llt's version and commit, the resolved configuration, fingerprints of the
tokenizer files and of every corpus's `summary.json` (which holds each shard's checksum),
the world size, and the checkpoint the run resumes from.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

from llt.errors import ConfigError

# Per-process values, not part of what every rank must agree on: HF's default logging_dir
# holds the host name and the time.
PER_PROCESS = {"local_rank", "logging_dir", "llt_config_file"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "chat_template.jinja", "added_tokens.json")


def _digest(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(str(p.name).encode())
        h.update(p.read_bytes() if p.is_file() else b"<missing>")
    return h.hexdigest()[:16]


def _commit() -> str | None:
    """The checkout's commit when llt runs from a git checkout (HEAD, read from .git)."""
    git = Path(__file__).resolve().parents[2] / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = git / head[5:]
            return ref.read_text().strip() if ref.is_file() else head[5:]
        return head
    except OSError:
        return None


def fingerprint(groups: dict, model_path: str, data_paths: list[str], resume: str | None,
                world_size: int) -> dict:
    """What this rank is about to run (`groups`: the resolved configuration by group;
    `data_paths`: the corpus folders, training and held-out)."""
    import llt

    config = {f"{name}.{k}": v for name, values in groups.items() for k, v in values.items()
              if k not in PER_PROCESS}
    corpora = sorted(str(p) for path in data_paths for p in Path(path).rglob("summary.json"))
    return {"node": f"node {os.environ.get('GROUP_RANK', os.environ.get('NODE_RANK', '?'))} "
                    f"(host {socket.gethostname()}, rank {os.environ.get('RANK', '0')})",
            "llt": f"{llt.__version__} {_commit() or ''}".strip(),
            "config": json.loads(json.dumps(config, default=str)),
            "tokenizer": _digest(Path(model_path) / f for f in TOKENIZER_FILES),
            "data": _digest(corpora), "world size": world_size,
            "resume from": resume}


def differences(mine: dict, first: dict) -> list[str]:
    """What `mine` has that differs from `first` (rank 0's), each as `what: mine vs first`.

    Examples:
        >>> a = {"node": "n0", "llt": "0.1", "config": {"train.lr": 1}, "data": "x"}
        >>> differences({**a, "node": "n1", "config": {"train.lr": 2}}, a)
        ['--lr 2 vs 1']
    """
    out = []
    for key, value in mine.items():
        if key == "node" or value == first.get(key):
            continue
        if key == "config":
            for k in sorted(set(value) | set(first[key])):
                if value.get(k) != first[key].get(k):
                    out.append(f"--{k.split('.', 1)[1]} {_short(value.get(k))} vs {_short(first[key].get(k))}")
        else:
            out.append(f"{key} {_short(value)} vs {_short(first.get(key))}")
    return out


def _short(value, n: int = 80) -> str:
    """`value` in at most about `n` characters: its head and its tail (where two checkpoint
    paths, or two data folders, differ).

    Examples:
        >>> _short("/scratch/run/" + "x" * 90 + "/checkpoint-6", 40)
        '/scratch/run/xxxxxx...xxxxx/checkpoint-6'
    """
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= n else text[:n // 2 - 1] + "..." + text[-(n // 2 - 2):]


def check_ranks_agree(mine: dict) -> None:
    """Gather every rank's fingerprint; on a difference raise the same `ConfigError` on
    every rank, naming the first rank that differs from rank 0 and how."""
    from accelerate.utils import gather_object

    every = gather_object([mine])
    for other in every[1:]:
        diff = differences(other, every[0])
        if diff:
            raise ConfigError(f"{other['node']} differs from {every[0]['node']}: {'; '.join(diff[:4])}"
                              f"{' ...' if len(diff) > 4 else ''}. Every node must run the same llt, command, "
                              "tokenizer and data")


def check_storage(args) -> str:
    """Whether the run folder's parent is one folder every node sees ("shared") or each
    node's own disk at the same path ("node-local"), found out, not assumed: each node's
    first process leaves a marker there, and each looks for the others'.

    Shared: rank 0 writes the checkpoints, as on one node. Node-local: every node keeps a
    whole copy of each checkpoint (`llt.train.node_copies`: the files each node's processes
    wrote are sent to the nodes that lack them), so every node can resume from its own disk.
    `--save_on_each_node` is refused either way: transformers 5's `save_pretrained` writes
    the weights on global rank 0 only (measured), so the flag cannot give the other nodes a
    whole checkpoint, and on a shared folder the nodes would write the same one at once."""
    import shutil
    import uuid

    from accelerate.utils import broadcast_object_list, gather_object

    local_main = args.local_process_index == 0
    nodes = gather_object([args.process_index if local_main else None])
    nodes = sorted(r for r in nodes if r is not None)
    if len(nodes) < 2:
        return "one node"
    token = [uuid.uuid4().hex[:12]]
    broadcast_object_list(token, from_process=0)
    parent = Path(args.output_dir).parent
    probe = parent / f".llt-storage-{token[0]}"
    if local_main:
        probe.mkdir(parents=True, exist_ok=True)
        (probe / f"rank-{args.process_index}").touch()
    _barrier()
    seen = sorted(int(p.name.split("-")[1]) for p in probe.glob("rank-*")) if local_main else nodes
    views = gather_object([seen == nodes])
    _barrier()
    if local_main:
        (probe / f"rank-{args.process_index}").unlink(missing_ok=True)
        if not any(probe.iterdir()):
            shutil.rmtree(probe, ignore_errors=True)
    shared = all(views)
    if args.save_on_each_node:
        raise ConfigError("--save_on_each_node: drop the flag; " + (
            f"{parent} is one folder every node sees, and the nodes would write the same checkpoint at once"
            if shared else f"each node has its own folder at {parent}, and llt gives every node a whole copy "
                           "of each checkpoint itself (transformers 5 writes the weights on rank 0 only)"))
    if not shared and args.process_index == 0:
        import logging

        logging.getLogger("llt").warning(
            "llt: --output_path %s is each node's own disk (the nodes do not see each other's files): every node "
            "keeps a whole copy of each checkpoint, sent from the nodes that wrote it", parent)
    return "shared" if shared else "node-local"


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
