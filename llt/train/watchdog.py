"""A bound on how long a run outlives a dead peer (`--node_timeout`).

When a node dies (kill -9, a crash, a lost machine), the others notice only when a
collective fails: at once if the peer's connection closes cleanly, but otherwise only after
the process group's timeout (`--ddp_timeout`, 30 minutes by default), and on a loaded
machine even a closed connection was once seen to leave a survivor waiting past 120 s.
Here every process counts up a heartbeat key in the run's own rendezvous store (the
c10d store torch.distributed already uses) every few seconds, from a background thread
that runs whatever the main thread is doing; the same thread reads the others' counters.
A counter that does not move for `timeout` seconds (timed on this machine, so no clock
needs to agree), or a store that stops answering (it lives on node 0), ends this process
with one line naming the silent rank and exit code 1, so the job ends and can be
resubmitted (`--load_ckpt_path auto` resumes from the newest complete checkpoint). A
process leaving normally says so first (`stop`), so a rank that finishes early is never
taken for dead.
"""

from __future__ import annotations

import os
import sys
import threading
import time

_running: "Watchdog | None" = None


class Watchdog:
    def __init__(self, store, rank: int, world: int, timeout: float, hosts: dict[int, str] | None = None):
        self.store, self.rank, self.world, self.timeout = store, rank, world, timeout
        self.hosts = hosts or {}
        self.interval = max(0.2, min(5.0, timeout / 6))
        self._stop = threading.Event()
        self._seen = {r: (-1, time.monotonic()) for r in range(world) if r != rank}
        self._thread = threading.Thread(target=self._loop, name="llt-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def stop(self, left: bool = True) -> None:
        """Stop watching; with `left`, first say this process leaves normally (the others then
        stop watching it; a process that crashed does not, and the others end on its silence)."""
        self._stop.set()
        if not left:
            return
        try:
            self.store.add(f"llt/left/{self.rank}", 1)
        except Exception:  # noqa: BLE001 - the store may be gone already at the very end
            pass

    def _loop(self) -> None:
        while not self._stop.is_set():
            # The store's host may be frozen rather than gone, and a store call then never
            # returns: each round runs in a thread of its own, given `timeout` seconds.
            result: list = []
            poll = threading.Thread(target=self._poll, args=(result,), name="llt-watchdog-poll", daemon=True)
            poll.start()
            poll.join(self.timeout)
            if self._stop.is_set():
                return
            if not result:
                self._die(f"the run's rendezvous store has not answered for {self.timeout:g} s (--node_timeout); "
                          "the node hosting it is probably gone")
            kind, detail = result[0]
            if kind == "error":
                self._die(f"the run's rendezvous store stopped answering ({detail}); the node hosting it is "
                          "probably gone")
            if kind == "silent":
                rank, quiet = detail
                self._die(f"rank {rank}{self._where(rank)} has not answered for {quiet:.0f} s (--node_timeout "
                          f"{self.timeout:g}); its node is probably gone")
            self._stop.wait(self.interval)

    def _poll(self, result: list) -> None:
        try:
            self.store.add(f"llt/beat/{self.rank}", 1)
            silent = self._silent()
            result.append(("silent", silent) if silent is not None else ("ok", None))
        except Exception as e:  # noqa: BLE001 - the store's host is gone
            result.append(("error", type(e).__name__))

    def _silent(self):
        """(rank, seconds) of a peer whose counter stood still for `timeout`, or None."""
        now = time.monotonic()
        for r, (count, since) in list(self._seen.items()):
            if self.store.add(f"llt/left/{r}", 0):
                del self._seen[r]
                continue
            beat = self.store.add(f"llt/beat/{r}", 0)  # add 0: read, and never block on a missing key
            if beat != count:
                self._seen[r] = (beat, now)
            elif now - since > self.timeout:
                return r, now - since
        return None

    def _where(self, rank: int) -> str:
        return f" (host {self.hosts[rank]})" if rank in self.hosts else ""

    def _die(self, why: str) -> None:
        line = (f"llt: rank {self.rank}: {why}. Exiting so the job ends; resubmit the same command "
                "(--load_ckpt_path auto resumes from the newest complete checkpoint)\n")
        # stderr may be a pipe nobody drains any more: the line gets 2 s, the exit is certain
        writer = threading.Thread(target=lambda: os.write(sys.stderr.fileno(), line.encode()), daemon=True)
        writer.start()
        writer.join(2.0)
        _stop_launcher_agent()
        os._exit(1)


# The launchers whose agent starts the training processes: once a peer is gone, the agent
# would wait on a rendezvous the dead node hosted, or at its exit barrier (torchrun: 300 s).
AGENTS = ("torch.distributed.run", "torchrun", "accelerate", "deepspeed")


def _stop_launcher_agent() -> None:
    """SIGTERM to this process's parent when it is a launcher agent (its documented way to
    stop its workers and exit), so the node's job ends now rather than minutes later."""
    import signal

    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return
    if not any(a in cmd for a in AGENTS):
        return
    try:
        os.kill(parent, signal.SIGTERM)
        # an agent that would wait on the lost node (its rendezvous, its exit barrier) gets 5 s
        for _ in range(50):
            time.sleep(0.1)
            if os.getppid() != parent:
                return
        os.kill(parent, signal.SIGKILL)
    except OSError:
        pass


def start(args) -> None:
    """Watch every other process of this run (several processes, `--node_timeout` > 0)."""
    global _running
    import torch.distributed as dist

    if _running is not None or not args.node_timeout or not (dist.is_available() and dist.is_initialized()):
        return
    try:
        store = dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - a private API: without it, only --ddp_timeout bounds the wait
        return
    from accelerate.utils import gather_object
    import socket

    hosts = dict(gather_object([(args.process_index, socket.gethostname())]))
    _running = Watchdog(store, args.process_index, args.world_size, args.node_timeout, hosts).start()


def stop(left: bool = True) -> None:
    """This process stops watching; with `left` (it did not crash) the others stop watching it."""
    global _running
    if _running is not None:
        _running.stop(left)
        _running = None
