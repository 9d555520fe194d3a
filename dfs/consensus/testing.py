"""A tiny deterministic state machine and a replica runner, for tests of RaftHost.

``CounterSM`` keeps, in one KV store (RocksKV or MemoryKV), per request id the
result of an ``add`` command, plus counters of applied entries and commands;
the applied index is written in the same WriteBatch as the effects.

Commands (msgpack):

* ``["add", rid]`` -> the sequence number given to ``rid`` (1, 2, ...); a retry
  of a known ``rid`` returns the recorded number (and counts a duplicate).
* ``["put", key, value]`` -> b"ok"; ``["pad", n_bytes]`` -> b"ok" (bulk).

The runner (``python -m dfs.consensus.testing serve ...``) hosts one replica
and a JSON-lines control server on 127.0.0.1 for integration tests; see
:func:`serve` for the requests it understands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import struct
import sys
import threading

import msgpack

from dfs.consensus.api import StateMachine
from dfs.kv import KV, MemoryKV, RocksKV, WriteBatch

APPLIED = b"\x00applied"
ENTRIES = b"\x00entries"
COMMANDS = b"\x00commands"
SEQ = b"\x00seq"
DUPS = b"\x00dups"
_U64 = struct.Struct(">Q")


def _u64(v: bytes | None) -> int:
    return 0 if v is None else _U64.unpack(v)[0]


def add_cmd(rid: str) -> bytes:
    return msgpack.packb(["add", rid])


def put_cmd(key: bytes, value: bytes) -> bytes:
    return msgpack.packb(["put", key, value])


class CounterSM(StateMachine):
    """``path=None``: in memory; otherwise RocksDB in ``path``."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._lock = threading.RLock()
        self.restores = 0
        self.kv: KV = self._open()

    def _open(self) -> KV:
        return MemoryKV() if self.path is None else RocksKV(self.path)

    def applied_index(self) -> int:
        with self._lock:
            return _u64(self.kv.get(APPLIED))

    def apply(self, index: int, commands: list[bytes]) -> list[bytes]:
        with self._lock:
            kv = self.kv
            wb = WriteBatch()
            pending: dict[bytes, bytes] = {}

            def get(k: bytes) -> bytes | None:
                return pending[k] if k in pending else kv.get(k)

            def put(k: bytes, v: bytes) -> None:
                pending[k] = v
                wb.put(k, v)

            results = []
            for raw in commands:
                cmd = msgpack.unpackb(raw)
                op = cmd[0]
                if op == "add":
                    key = b"r/" + cmd[1].encode()
                    old = get(key)
                    if old is not None:
                        put(DUPS, _U64.pack(_u64(get(DUPS)) + 1))
                        results.append(old)
                        continue
                    seq = _u64(get(SEQ)) + 1
                    put(SEQ, _U64.pack(seq))
                    put(key, str(seq).encode())
                    results.append(str(seq).encode())
                elif op == "put":
                    put(b"k/" + cmd[1], cmd[2])
                    results.append(b"ok")
                elif op == "pad":
                    put(b"pad/" + str(index).encode(), b"x" * int(cmd[1]))
                    results.append(b"ok")
                else:
                    results.append(b"error: unknown op")
            put(ENTRIES, _U64.pack(_u64(get(ENTRIES)) + 1))
            put(COMMANDS, _U64.pack(_u64(get(COMMANDS)) + len(commands)))
            put(APPLIED, _U64.pack(index))
            kv.write(wb)
            return results

    def snapshot(self, path: str) -> None:
        with self._lock:
            self.kv.checkpoint(path)

    def restore(self, path: str) -> None:
        with self._lock:
            self.kv.close()
            if self.path is None:
                self.kv = MemoryKV(path)
            else:
                shutil.rmtree(self.path, ignore_errors=True)
                shutil.move(path, self.path)
                self.kv = self._open()
            self.restores += 1

    # --- inspection
    def counters(self) -> dict:
        with self._lock:
            return {
                "applied": _u64(self.kv.get(APPLIED)),
                "entries": _u64(self.kv.get(ENTRIES)),
                "commands": _u64(self.kv.get(COMMANDS)),
                "seq": _u64(self.kv.get(SEQ)),
                "dups": _u64(self.kv.get(DUPS)),
                "restores": self.restores,
            }

    def results(self) -> dict[str, str]:
        """rid -> sequence number, for every applied ``add``."""
        with self._lock:
            return {k[2:].decode(): v.decode() for k, v in self.kv.scan_prefix(b"r/")}

    def digest(self) -> list[tuple[str, str]]:
        """Every user pair (not the bookkeeping keys), hex, to compare replicas."""
        with self._lock:
            return [(k.hex(), v.hex()) for k, v in self.kv.items() if not k.startswith(b"\x00")]

    def close(self) -> None:
        with self._lock:
            self.kv.close()


# ---------------------------------------------------------------- the runner


async def _handle(host, sm: CounterSM, req: dict, stop: asyncio.Event) -> dict:
    from dfs.common.errors import DfsError

    op = req["op"]
    if op == "status":
        return {"ok": True, "raft": host.status(), "sm": sm.counters()}
    if op == "results":
        return {"ok": True, "results": sm.results(), "digest": sm.digest(), "sm": sm.counters()}
    if op == "add":  # submit one add per rid, all concurrently, at most `concurrency` at once
        rids = req["rids"]
        sem = asyncio.Semaphore(int(req.get("concurrency", len(rids)) or 1))
        timeout = req.get("timeout", 5.0)

        async def one(rid: str):
            async with sem:
                try:
                    return rid, (await host.submit(add_cmd(rid), timeout=timeout)).decode(), None
                except DfsError as e:
                    return rid, None, {"type": type(e).__name__, "leader": getattr(e, "leader", None)}

        out = await asyncio.gather(*(one(r) for r in rids))
        return {"ok": True, "acks": {r: v for r, v, e in out if e is None},
                "errors": {r: e for r, v, e in out if e is not None}}
    if op == "bulk":  # n commands of `size` bytes, concurrency c: for compaction tests / benchmarks
        n, size, c = int(req["n"]), int(req.get("size", 16)), int(req.get("concurrency", 1))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        errors = 0

        async def worker(k: int):
            nonlocal errors
            for _ in range(k):
                try:
                    await host.submit(msgpack.packb(["pad", size]), timeout=5.0)
                except DfsError:
                    errors += 1

        per = [n // c + (1 if i < n % c else 0) for i in range(c)]
        await asyncio.gather(*(worker(k) for k in per))
        return {"ok": True, "seconds": loop.time() - t0, "errors": errors}
    if op == "stop":
        stop.set()
        return {"ok": True}
    return {"ok": False, "error": f"unknown op {op}"}


async def serve(args: argparse.Namespace) -> None:
    import logging

    from dfs.consensus.raft import RaftHost

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.makedirs(args.data, exist_ok=True)
    sm = CounterSM(os.path.join(args.data, "sm"))
    host = RaftHost(
        sm, args.self, args.peers.split(","), os.path.join(args.data, "raft"),
        election_timeout=(args.election_min, args.election_max),
        heartbeat=args.heartbeat,
        log_compaction_min_entries=args.compact,
        group_commit=not args.no_group_commit,
        durability=args.durability,
    )
    stop = asyncio.Event()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    resp = await _handle(host, sm, json.loads(line), stop)
                except Exception as e:  # report, keep serving
                    resp = {"ok": False, "error": repr(e)}
                writer.write(json.dumps(resp).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0, limit=1 << 24)
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        host.close()
        sm.close()


class Control:
    """Blocking JSON-lines client of a runner's control port (for tests)."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rwb")

    def call(self, **req) -> dict:
        self.file.write(json.dumps(req).encode() + b"\n")
        self.file.flush()
        line = self.file.readline()
        if not line:
            raise ConnectionError("runner closed the control connection")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


def bench(args: argparse.Namespace) -> None:
    """Start 3 replica processes on loopback and measure commits/s of the leader."""
    import re
    import signal
    import socket
    import subprocess
    import tempfile
    import time

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    root = tempfile.mkdtemp(prefix="raftbench-", dir=args.root)
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    procs, ctls = [], []
    try:
        for i, a in enumerate(addrs):
            logf = os.path.join(root, f"n{i}.log")
            cmd = [sys.executable, "-m", "dfs.consensus.testing", "serve", "--self", a,
                   "--peers", ",".join(addrs), "--data", os.path.join(root, f"n{i}"),
                   "--durability", args.durability]
            if args.no_group_commit:
                cmd.append("--no-group-commit")
            with open(logf, "wb") as out:
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 20
            while not (m := re.search(rb"READY (\d+)", open(logf, "rb").read())):
                if time.monotonic() > deadline or procs[-1].poll() is not None:
                    raise SystemExit(f"replica {i} failed to start")
                time.sleep(0.02)
            ctls.append(Control(int(m.group(1))))
        deadline = time.monotonic() + 20
        leader = None
        while leader is None:
            leader = next((c for c in ctls if c.call(op="status")["raft"]["role"] == "leader"), None)
            if time.monotonic() > deadline:
                raise SystemExit("no leader")
            time.sleep(0.02)
        leader.call(op="bulk", n=200, size=args.size, concurrency=args.concurrency)  # warm up
        s0 = leader.call(op="status")["sm"]
        j0 = [c.call(op="status")["raft"]["journal_syncs"] for c in ctls]
        r = leader.call(op="bulk", n=args.n, size=args.size, concurrency=args.concurrency)
        s1 = leader.call(op="status")["sm"]
        syncs = [c.call(op="status")["raft"]["journal_syncs"] - j for c, j in zip(ctls, j0)]
        entries = s1["entries"] - s0["entries"]
        print(json.dumps({
            "durability": args.durability,
            "group_commit": not args.no_group_commit, "concurrency": args.concurrency,
            "commands": args.n, "seconds": round(r["seconds"], 3), "errors": r["errors"],
            "commits_per_s": round(args.n / r["seconds"]), "entries": entries,
            "entries_per_s": round(entries / r["seconds"]),
            "commands_per_entry": round(args.n / max(entries, 1), 1),
            "journal_syncs": syncs,  # per replica (so far, followers included)
        }))
    finally:
        for c in ctls:
            c.close()
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dfs.consensus.testing")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run one replica of CounterSM with a control port")
    s.add_argument("--self", required=True)
    s.add_argument("--peers", required=True, help="comma separated raft addresses (all members)")
    s.add_argument("--data", required=True)
    s.add_argument("--compact", type=int, default=5000, help="logCompactionMinEntries")
    s.add_argument("--election-min", type=float, default=0.4)
    s.add_argument("--election-max", type=float, default=0.8)
    s.add_argument("--heartbeat", type=float, default=0.1)
    s.add_argument("--no-group-commit", action="store_true")
    s.add_argument("--durability", choices=("sync", "async"), default="sync")
    b = sub.add_parser("bench", help="3 local replica processes; commits/s at the leader")
    b.add_argument("--n", type=int, default=5000)
    b.add_argument("--concurrency", type=int, default=64)
    b.add_argument("--size", type=int, default=64, help="bytes written per command")
    b.add_argument("--no-group-commit", action="store_true")
    b.add_argument("--durability", choices=("sync", "async"), default="sync")
    b.add_argument("--root", default=None, help="replicas' folders under this one (default: a temp dir)")
    args = p.parse_args(argv)
    if args.cmd == "serve":
        asyncio.run(serve(args))
    elif args.cmd == "bench":
        bench(args)


if __name__ == "__main__":
    main(sys.argv[1:])
