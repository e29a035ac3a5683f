"""Checkpoints on node-local disks: every node keeps a whole copy of each checkpoint.

When the run folder is each node's own disk at one path (`preflight.check_storage` finds
this out at start-up), every process still writes its part of a checkpoint where it runs:
rank 0 the model, optimizer and trainer state, every rank its RNG state (and, under
DeepSpeed, its ZeRO shards). Once all have written into their node's staging folder,
`share` gives each node the files it lacks: the first process of each node lists what its
node holds, and each file is broadcast, in chunks, from the first node that has it to the
nodes that lack it, over a gloo group of those processes (CPU tensors, whatever backend the
run trains with). Each node then publishes its own complete copy under `checkpoint-N`
(`llt.train.checkpointing`), so a resubmitted command resumes on every node from its own
disk, and a node that lost its copy is named by the pre-flight check.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

CHUNK = 64 << 20  # bytes per broadcast: memory stays flat whatever the checkpoint's size

_groups: dict[tuple, object] = {}


def _group(ranks: list[int]):
    """A gloo group of `ranks` (every process must call this, members or not), made once."""
    key = tuple(ranks)
    if key not in _groups:
        _groups[key] = dist.new_group(ranks=list(ranks), backend="gloo")
    return _groups[key]


def listing(folder: Path) -> dict[str, int]:
    """Every file under `folder`: relative path -> size in bytes."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def share(folder: Path, args) -> int:
    """Give each node's first process every file of the staged checkpoint `folder` that its
    node lacks; returns the bytes this process received. Every process calls it."""
    from accelerate.utils import gather_object

    local_main = args.local_process_index == 0
    held = gather_object([(args.process_index, listing(folder) if local_main else None)])
    nodes = sorted((rank, files) for rank, files in held if files is not None)
    group = _group([rank for rank, _ in nodes])
    if not local_main:
        return 0
    mine = dict(nodes)[args.process_index]
    received = 0
    sent: set[str] = set()
    for src, files in nodes:
        for rel, size in files.items():
            if rel in sent:
                continue
            sent.add(rel)
            takers = [rank for rank, have in nodes if rel not in have]
            if not takers:
                continue
            received += _broadcast(folder / rel, size, src, args.process_index, rel in mine, group)
    return received


def _broadcast(path: Path, size: int, src: int, me: int, have: bool, group) -> int:
    """One file from `src` to every member of `group`; members that lack it write it."""
    write = None if have else _open(path)
    got = 0
    with open(path, "rb") if me == src else _null() as read:
        for lo in range(0, max(size, 1), CHUNK):
            n = min(CHUNK, size - lo)
            buf = torch.empty(max(n, 0), dtype=torch.uint8)
            if me == src and n:
                buf = torch.frombuffer(bytearray(read.read(n)), dtype=torch.uint8)
            if n:
                dist.broadcast(buf, src=src, group=group)
            if write is not None and n:
                write.write(buf.numpy().tobytes())
                got += n
    if write is not None:
        write.close()
    return got


def _open(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "wb")


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
