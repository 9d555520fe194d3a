"""The client side of the network-namespace tests: run inside a namespace as

    ip netns exec NS python tests/netns/nsclient.py --mgmt A,B,C COMMAND ...

It reaches the cluster only through the mgmt addresses it is given (the
library's own path: cluster map, leader following, chains). Commands:

* ``write DIR N SEED``: writes N files of various sizes (inline, one chunk,
  several chunks) under DIR, reads each back; prints one JSON line
  ``{path: {"ino", "size", "sha256"}}``.
* ``verify JSON``: reads the files a ``write`` reported and checks size and digest;
  prints ``OK <n>``.
* ``creates TOP WORKERS``: makes directories under TOP until each shard holds
  two, prints ``READY <json {dir: ino}>``, then WORKERS tasks create empty
  files in them round-robin until stdin says ``stop`` (or closes). Every
  acknowledged create is printed as ``ACK <dir>/<name>`` the moment it is
  acknowledged, every failed one (outcome unknown) as ``FAIL <dir>/<name> <error>``;
  at the end ``DONE <acks> <fails>``.
* ``list TOP``: prints one JSON line ``{name: [names...] | null}``: for each
  entry of TOP, the names in it if it is a directory (listing order,
  duplicates kept), else null.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import stat
import sys
import threading

import dfs
from dfs.common.ids import shard_of


def content(seed: int, i: int, size: int) -> bytes:
    return random.Random(seed * 1000 + i).randbytes(size)


SIZES = [1000, 100_000, 5 << 20, (9 << 20) + 12345]  # inline, one chunk, two chunks, three chunks


async def cmd_write(fs, d: str, n: int, seed: int) -> None:
    await fs.makedirs(d, exist_ok=True)
    out = {}
    for i in range(n):
        path = f"{d}/f{i}"
        data = content(seed, i, SIZES[i % len(SIZES)])
        f = await fs.open(path, "wb")
        try:
            await f.write(data)
            await f.fsync()
        finally:
            await f.close()
        back = await fs.read_bytes(path)
        assert back == data, f"{path}: read back {len(back)} bytes differ from the {len(data)} written"
        out[path] = {"ino": (await fs.getattr(path)).ino, "size": len(data),
                     "sha256": hashlib.sha256(data).hexdigest()}
    print(json.dumps(out), flush=True)


async def cmd_verify(fs, spec: str) -> None:
    files = json.loads(spec)
    for path, want in files.items():
        data = await fs.read_bytes(path)
        assert len(data) == want["size"], f"{path}: {len(data)} bytes, want {want['size']}"
        assert hashlib.sha256(data).hexdigest() == want["sha256"], f"{path}: content differs"
    print(f"OK {len(files)}", flush=True)


async def cmd_creates(fs, top: str, workers: int) -> None:
    meta = fs.meta
    await fs.makedirs(top, exist_ok=True)
    top_ino = (await fs.getattr(top)).ino
    dirs: dict[str, int] = {}
    per_shard: dict[int, int] = {}
    i = 0
    while len(per_shard) < meta.nshards or min(per_shard.values()) < 2:
        a = await meta.mkdir(top_ino, f"d{i}")
        dirs[f"d{i}"] = a.ino
        per_shard[shard_of(a.ino)] = per_shard.get(shard_of(a.ino), 0) + 1
        i += 1
    print("READY " + json.dumps(dirs), flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def watch_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    names = list(dirs)
    counts = {"ack": 0, "fail": 0}

    async def worker(w: int) -> None:
        n = 0
        while not stop.is_set():
            d = names[(w + n) % len(names)]
            name = f"w{w}-{n}"
            n += 1
            try:
                await meta.create(dirs[d], name)
            except Exception as e:  # noqa: BLE001 - outcome unknown, reported
                counts["fail"] += 1
                sys.stdout.write(f"FAIL {d}/{name} {type(e).__name__}\n")
            else:
                counts["ack"] += 1
                sys.stdout.write(f"ACK {d}/{name}\n")
            sys.stdout.flush()

    await asyncio.gather(*(worker(w) for w in range(workers)))
    print(f"DONE {counts['ack']} {counts['fail']}", flush=True)


async def cmd_list(fs, top: str) -> None:
    out = {}
    for e in await fs.readdir(top, plus=False):
        name = e.name.decode()
        sub = f"{top.rstrip('/')}/{name}"
        out[name] = ([x.name.decode() for x in await fs.readdir(sub, plus=False)]
                     if stat.S_ISDIR(e.type) else None)
    print(json.dumps(out), flush=True)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mgmt", required=True)
    ap.add_argument("cmd", choices=["write", "verify", "creates", "list"])
    ap.add_argument("args", nargs="*")
    a = ap.parse_args()
    fs = await dfs.AsyncClient.connect(mgmt=a.mgmt.split(","))
    try:
        if a.cmd == "write":
            await cmd_write(fs, a.args[0], int(a.args[1]), int(a.args[2]))
        elif a.cmd == "verify":
            await cmd_verify(fs, a.args[0])
        elif a.cmd == "creates":
            await cmd_creates(fs, a.args[0], int(a.args[1]))
        else:
            await cmd_list(fs, a.args[0])
    finally:
        await fs.close()


if __name__ == "__main__":
    asyncio.run(main())
