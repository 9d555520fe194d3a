"""`dfs bench shards` with every process on a host of its own network stack (issue 17).

    sudo .venv/bin/python benchmarks/shards_netns.py --shards 1,2,4 [--hosts 3] \
        [any option of dfs bench shards] --json benchmarks/results/shards-netns.json

The same phases, workloads and per-process CPU accounting as `dfs bench shards`
(dfs/bench/shards.py), on a cluster in network namespaces (dfs.testing.netns):
``--hosts`` server hosts on one switch (a Linux bridge), replica r of every shard,
mgmt and data server d on host r, d mod hosts, as on that many machines, and the
client on a host of its own. Every request and every Raft message crosses veth
pairs and the bridge, with the kernel's TCP over a real interface instead of
loopback's shortcuts. The client part runs inside the client's namespace
(``python -m dfs.bench.shards --attach SPEC``); /proc is shared, so it reads each
server's CPU time by PID as on loopback.

Needs root and ip(8) (as the tests under tests/netns do). Cleans up what it made:
the processes by PID, then the namespaces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from dfs.bench import shards as bench
from dfs.testing.netns import Fabric, NetnsCluster, unavailable


def measure_netns(nshards: int, a, root: str, log=print) -> dict:
    why = unavailable()
    if why:
        raise SystemExit(f"shards_netns: {why}")
    folder = os.path.join(root, f"s{nshards}")
    log(f"-- {nshards} shard(s) x {a.replicas} replicas, 1 mgmt, {a.data_servers} data server(s) "
        f"on {a.hosts} namespace hosts, the client on another: starting")
    with Fabric() as net:
        hosts = [net.add_host(f"h{i}", 11 + i) for i in range(a.hosts)]
        client = net.add_host("c", 100)
        cluster = NetnsCluster(folder, hosts, client, shards=nshards, replicas=a.replicas, mgmt_replicas=1,
                               data_servers=a.data_servers, chain_replicas=max(1, min(3, a.data_servers)),
                               metrics=True)
        try:
            cluster.start(timeout=180)
            spec = {"config": cluster.config_path, "folder": folder, "out": os.path.join(folder, "result.json"),
                    "args": {**vars(a), "json": None},
                    "procs": [{"name": p.name, "pid": p.pid, "role": p.role, "shard": p.shard,
                               "address": p.address, "metrics": p.metrics} for p in cluster.procs]}
            path = os.path.join(folder, "attach.json")
            with open(path, "w") as f:
                json.dump(spec, f)
            subprocess.run(cluster.client_argv(["-m", "dfs.bench.shards", "--attach", path]), check=True)
            with open(spec["out"]) as f:
                res = json.load(f)
        finally:
            cluster.stop()
    res["netns"] = {"hosts": a.hosts, "placement": "replica r, mgmt, data server d on host r, d mod hosts; "
                    "the client on a host of its own"}
    return res


def _hosts(ap) -> None:
    ap.add_argument("--hosts", type=int, default=3, help="server hosts (network namespaces)")


if __name__ == "__main__":
    sys.exit(bench.main(measure=measure_netns, extra_args=(_hosts,)))
