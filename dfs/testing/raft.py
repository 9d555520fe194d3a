"""Raft replicas of the counter state machine as OS processes, for the tests of RaftHost
across restarts, kill -9 and power cuts.

    c = ProcCluster(root, n=3, compact=5000, durability="sync", data_root=None)
    c.start_all(); leader = c.leader(); leader.call(op="add", rids=[...])
    c.kill(i); c.start(i); c.converged(); check_exactly_once(results, acked)

Each replica is ``python -m dfs.consensus.testing serve`` (CounterSM on RocksDB
and a RaftHost) with a JSON-lines control port; its data folder is under
``data_root`` (default ``root``: a power-cut test puts it on its file system),
its log under ``root``. Processes are tracked by PID and killed by PID.

May import: dfs.consensus.testing and dfs.testing (test support).
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from dfs.consensus.testing import Control
from dfs.local.procs import free_ports
from dfs.testing import wait

REPO = Path(__file__).resolve().parents[2]

until = functools.partial(wait.until, interval=0.02)  # the failover time is measured with these polls


class Replica:
    def __init__(self, idx: int, addr: str, root: Path, data_root: Path) -> None:
        self.idx, self.addr = idx, addr
        self.data = data_root / f"node{idx}"
        self.proc: subprocess.Popen | None = None
        self.ctl: Control | None = None
        self.port = 0
        self.logfile = root / f"node{idx}.log"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def call(self, **req) -> dict:
        resp = self.ctl.call(**req)
        assert resp.get("ok"), resp
        return resp

    def status(self) -> dict:
        return self.call(op="status")


class ProcCluster:
    def __init__(self, root: Path, n: int = 3, compact: int = 5000, durability: str = "sync",
                 data_root: Path | None = None) -> None:
        self.root = root
        self.compact = compact
        self.durability = durability
        addrs = [f"127.0.0.1:{p}" for p in free_ports(n)]
        self.peers = ",".join(addrs)
        self.replicas = [Replica(i, a, root, data_root or root) for i, a in enumerate(addrs)]

    def start(self, i: int) -> Replica:
        r = self.replicas[i]
        assert not r.alive
        log = open(r.logfile, "ab")
        offset = log.tell()
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        r.proc = subprocess.Popen(
            [sys.executable, "-m", "dfs.consensus.testing", "serve", "--self", r.addr,
             "--peers", self.peers, "--data", str(r.data), "--compact", str(self.compact),
             "--durability", self.durability],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO), env=env,
        )
        log.close()

        def ready():
            if r.proc.poll() is not None:
                raise AssertionError(f"replica {i} exited: {r.logfile.read_text()[-2000:]}")
            m = re.search(rb"READY (\d+)", r.logfile.read_bytes()[offset:])
            return m and int(m.group(1))

        port = until(ready, 30, f"replica {i} to start")
        r.port = port
        r.ctl = Control(port)
        return r

    def start_all(self) -> None:
        for i in range(len(self.replicas)):
            self.start(i)

    def kill(self, i: int) -> None:
        """kill -9 one replica we started (by its PID)."""
        r = self.replicas[i]
        if r.ctl is not None:
            r.ctl.close()
            r.ctl = None
        if r.proc is not None and r.proc.poll() is None:
            os.kill(r.proc.pid, signal.SIGKILL)
            r.proc.wait(10)

    def close(self) -> None:
        for i in range(len(self.replicas)):
            self.kill(i)

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive and r.ctl is not None]

    def leader(self, timeout: float = 10.0) -> Replica:
        def find():
            for r in self.live():
                if r.status()["raft"]["role"] == "leader":
                    return r
            return None

        return until(find, timeout, "a leader")

    def converged(self, timeout: float = 10.0) -> list[dict]:
        """Wait until a leader applied its term's first entry (so everything committed before
        it) and every live replica applied as far; return their `results`. (Equal applied
        indexes alone are not enough: right after a restart from the same dump, every replica
        agrees before the new leader committed the log's tail.)"""

        def same():
            st = [r.status() for r in self.live()]
            if not any(s["raft"]["role"] == "leader" and s["raft"]["leader_ready"] for s in st):
                return False
            return len({s["sm"]["applied"] for s in st}) == 1

        until(same, timeout, "replicas to converge")
        return [r.call(op="results") for r in self.live()]


def check_exactly_once(results: dict, acked: dict[str, str]) -> None:
    """Every acknowledged rid is stored once with the acked number; numbers are unique."""
    stored = results["results"]
    for rid, seq in acked.items():
        assert stored.get(rid) == seq, (rid, seq, stored.get(rid))
    seqs = [int(v) for v in stored.values()]
    assert sorted(seqs) == list(range(1, len(seqs) + 1))
    assert results["sm"]["seq"] == len(stored)
    assert results["sm"]["dups"] == 0
