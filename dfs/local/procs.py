"""The server processes of one cluster file, started, watched and stopped by
the object that started them.

``ServerGroup`` is the process handling every launcher shares: the argv of
each role (``python -m dfs.{mgmt,meta,data}.server ...``), spawn with the log
in a file, stop (SIGTERM, SIGKILL after a grace period), kill -9, restart, and
the deadline-bounded waits (healthy, replicas converged). How the group asks
its servers whether they are ready is the subclass's: ``LocalCluster`` asks
them over loopback, the tests' ``NetnsCluster`` through an agent inside a
network namespace, and prefixes the argv with ``ip netns exec NS``.

Processes are tracked by PID: only the ones this object started are ever
signalled. ``pid_alive``, ``cmdline`` and ``stop_pids`` are for processes
another ``dfs`` command started (``dfs cluster up`` records them in
``pids.json``, see ``dfs.local.pids``).

May import: the standard library only (no dfs package: it is the bottom of
the launcher).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any


def _listen_range() -> tuple[int, int]:
    """Where to pick listening ports: below the kernel's ephemeral range (or above it),
    so that no outgoing connection of any process can take a port between the moment
    it is picked and the moment its server binds it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = map(int, f.read().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    if lo - 10000 >= 2000:
        return 10000, lo
    if 65535 - hi >= 2000:
        return hi + 1, 65536
    return 1024, 65536


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` now, outside the ephemeral range (each bound
    once to check, then released)."""
    lo, hi = _listen_range()
    rnd = random.SystemRandom()
    out: list[int] = []
    for _ in range(n * 50):
        if len(out) == n:
            return out
        p = rnd.randrange(lo, hi)
        if p in out:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, p))
            except OSError:
                continue
        out.append(p)
    if len(out) == n:
        return out
    raise OSError(f"no {n} free ports on {host} in {lo}..{hi}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmdline(pid: int) -> str:
    """The command line of process ``pid`` ("" if it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stop_pids(pids: list[int], grace: float = 15.0) -> None:
    """SIGTERM to ``pids`` (processes another command started), SIGKILL to those still
    running after ``grace`` seconds."""
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < end:
        time.sleep(0.05)  # polling interval of a deadline-bounded wait
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Proc:
    role: str  # "mgmt" | "meta" | "data"
    shard: int  # -1 for mgmt and data servers
    # replica: the mgmt replica, the shard replica, or the data server id
    replica: int
    address: str
    data: str
    log: str
    popen: subprocess.Popen | None = None
    argv: list[str] = field(default_factory=list)
    metrics: str | None = None  # Prometheus endpoint host:port (from the cluster file), if any

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def name(self) -> str:
        if self.role == "meta":
            return f"meta.{self.shard}.{self.replica}"
        return f"{self.role}.{self.replica}"


def server_argv(config_path: str, p: Proc) -> list[str]:
    """How process ``p`` of the cluster file ``config_path`` is run (on this machine)."""
    if p.role == "mgmt":
        return [sys.executable, "-m", "dfs.mgmt.server", "--config", config_path,
                "--replica", str(p.replica), "--data", p.data]
    if p.role == "data":
        return [sys.executable, "-m", "dfs.data.server", "--config", config_path, "--server", str(p.replica)]
    return [sys.executable, "-m", "dfs.meta.server", "--config", config_path,
            "--shard", str(p.shard), "--replica", str(p.replica), "--data", p.data]


def _exit_on_sigterm():
    """While a group started with ``with`` runs in the main thread of a program that left
    SIGTERM at its default (a benchmark script, ``dfs bench``), a SIGTERM raises SystemExit
    so that leaving the ``with`` stops the servers; by default Python would die at once and
    leave them running. Returns the handler to put back (None: nothing changed)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    return signal.SIG_DFL


class ServerGroup:
    """The processes ``procs`` of the cluster file ``config_path``, with their data and
    logs under ``root``. Subclasses say how a status is asked (``statuses``,
    ``not_ready``) and may wrap the argv (``argv``)."""

    root: str
    config_path: str
    cfg: Any  # the cluster file's ClusterConfig
    procs: list[Proc]
    poll_interval = 0.05  # of the deadline-bounded waits
    healthy_timeout = 60.0
    converge_timeout = 30.0

    # ------------------------------------------------------------------ life cycle
    def argv(self, p: Proc) -> list[str]:
        return server_argv(self.config_path, p)

    def spawn(self, p: Proc) -> None:
        assert not p.alive, f"{p.name} is running"
        os.makedirs(p.data, mode=0o700, exist_ok=True)  # its state: the server's user's only (as the servers make theirs)
        p.argv = self.argv(p)
        with open(p.log, "ab") as logf:
            p.popen = subprocess.Popen(p.argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)

    def start(self, timeout: float | None = None) -> Any:
        """Spawn every process not running and wait until the group is healthy; on any
        failure, stop what this object started."""
        try:
            for p in self.procs:
                if not p.alive:
                    self.spawn(p)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to every process this object started, SIGKILL after ``grace``."""
        for p in self.procs:
            if p.alive:
                p.popen.send_signal(signal.SIGTERM)
        end = time.monotonic() + grace
        for p in self.procs:
            if p.popen is None:
                continue
            try:
                p.popen.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()

    def terminate(self, p: Proc, grace: float = 10.0) -> None:
        """SIGTERM to ``p``, SIGKILL after ``grace``, and reap."""
        if p.alive:
            p.popen.send_signal(signal.SIGTERM)
            try:
                p.popen.wait(grace)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()

    def kill(self, p: Proc) -> None:
        """kill -9, and reap."""
        if p.alive:
            p.popen.send_signal(signal.SIGKILL)
            p.popen.wait()

    def restart(self, p: Proc) -> None:
        self.kill(p)
        self.spawn(p)

    def __enter__(self):
        self._sigterm = _exit_on_sigterm()
        try:
            return self.start()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            prev, self._sigterm = getattr(self, "_sigterm", None), None
            if prev is not None:
                signal.signal(signal.SIGTERM, prev)

    # ------------------------------------------------------------------ inspection
    def meta_procs(self, shard: int | None = None) -> list[Proc]:
        return [p for p in self.procs if p.role == "meta" and (shard is None or p.shard == shard)]

    def mgmt_procs(self) -> list[Proc]:
        return [p for p in self.procs if p.role == "mgmt"]

    def data_procs(self) -> list[Proc]:
        return [p for p in self.procs if p.role == "data"]

    def dead(self) -> list[str]:
        """The processes this object started that have exited."""
        return [p.name for p in self.procs if p.popen is not None and p.popen.poll() is not None]

    def log_tails(self, names: list[str] | None = None, lines: int = 25) -> str:
        """The last ``lines`` lines of the logs of the named processes (default: all)."""
        out = []
        for p in self.procs:
            if names is None or p.name in names:
                try:
                    with open(p.log, errors="replace") as f:
                        tail = f.read().splitlines()[-lines:]
                except OSError as e:
                    tail = [f"({e})"]
                out.append(f"--- {p.name} ({p.log}):\n" + "\n".join(tail))
        return "\n".join(out)

    # ------------------------------------------------------------------ asking the servers
    def statuses(self, shard: int) -> list[Any]:
        """The Status answer of each replica of ``shard`` (None: no answer); the subclass's form."""
        raise NotImplementedError

    @staticmethod
    def status_field(st: Any, name: str) -> Any:
        """Field ``name`` of one of ``statuses``' answers."""
        return getattr(st, name)

    def not_ready(self) -> str | None:
        """None when the group is healthy, else what is missing (may raise when it never will be)."""
        raise NotImplementedError

    def leader_of(self, shard: int) -> Proc | None:
        """The replica of ``shard`` that says it leads."""
        for p, st in zip(self.meta_procs(shard), self.statuses(shard)):
            if st is not None and self.status_field(st, "role") == "leader":
                return p
        return None

    # ------------------------------------------------------------------ waits
    def wait_healthy(self, timeout: float | None = None) -> None:
        """Until ``not_ready()`` says nothing is missing."""
        timeout = self.healthy_timeout if timeout is None else timeout
        end = time.monotonic() + timeout
        while True:
            why = self.not_ready()
            if why is None:
                return
            if time.monotonic() > end:
                raise TimeoutError(f"cluster not healthy after {timeout}s ({why}); logs in {self.root}")
            time.sleep(self.poll_interval)  # polling interval of a deadline-bounded wait

    def wait_converged(self, shard: int, timeout: float | None = None) -> int:
        """Until every live replica of ``shard`` answers with the same applied index, one of them
        a leader that applied its term's no-op; returns the index. (Equal indexes alone are
        not enough: right after a restart every replica has restored the same state and they
        agree before the new leader has committed the log's tail.)"""
        timeout = self.converge_timeout if timeout is None else timeout
        end = time.monotonic() + timeout
        while True:
            sts = [s for p, s in zip(self.meta_procs(shard), self.statuses(shard)) if p.alive]
            idx = {self.status_field(s, "applied_index") for s in sts if s is not None}
            ready = any(self.status_field(s, "leader_ready") for s in sts if s is not None)
            if sts and None not in sts and len(idx) == 1 and ready:
                return idx.pop()
            if time.monotonic() > end:
                raise TimeoutError(f"shard {shard} replicas did not converge: {sts}")
            time.sleep(self.poll_interval)  # polling interval of a deadline-bounded wait

    def wait_all_converged(self, timeout: float | None = None) -> None:
        """wait_healthy, then wait_converged on every shard, all within ``timeout``."""
        timeout = self.healthy_timeout if timeout is None else timeout
        end = time.monotonic() + timeout
        self.wait_healthy(timeout)
        for s in range(self.cfg.nshards):
            self.wait_converged(s, max(1.0, end - time.monotonic()))
