"""`dfs status`: the whole cluster on one screen (or as JSON with --json).

Finds the cluster as the client does (``dfs.client.api.find_cluster``: --cluster,
--data, $DFS_MGMT, $DFS_CLUSTER, then `dfs cluster up`'s folder) and asks:

* mgmt, for the cluster map (``dfs.cli.cluster._fetch_map``: targets, chains)
  and, replica by replica, whether it answers and who it says leads;
* every metadata replica in the map, with the Status RPC (role, term, commit
  and applied index);
* every process's metrics endpoint, when the cluster file names one
  (``metrics = "host:port"``): Raft state of mgmt replicas, the Raft applied
  index used for lag, inode and client counts of shards, data servers'
  connections, bytes and chunk counts.

Everything is gathered concurrently with short timeouts; whatever does not
answer shows as down rather than failing the command. It only reads.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request

import click

LAG_ENTRIES = 100  # a replica this many log entries behind its leader's commit index is flagged
TIMEOUT = 2.0


def scrape(address: str, timeout: float = TIMEOUT) -> dict[str, list] | None:
    """``GET http://address/metrics``, parsed: metric family name -> samples (None: no answer)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as r:
            text = r.read().decode()
    except OSError:
        return None
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(fams: dict | None, name: str, **labels) -> float | None:
    """The first sample of ``name`` (a family or sample name) whose labels include ``labels``."""
    if not fams:
        return None
    for fam in (name, name.removesuffix("_total")):
        for s in fams.get(fam, ()):
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def total(fams: dict | None, name: str) -> float | None:
    """The sum of every sample of ``name`` (over its labels)."""
    if not fams:
        return None
    vals = [s.value for fam in (name, name.removesuffix("_total")) for s in fams.get(fam, ()) if s.name == name]
    return sum(vals) if vals else None


def raft_role(fams: dict | None) -> str | None:
    for r in ("leader", "follower", "candidate"):
        if value(fams, "dfs_raft_role", role=r) == 1:
            return r
    return None


def _int(v: float | None) -> int | None:
    return None if v is None else int(v)


def _cluster_file(cluster: str | None, data: str | None):
    """The whole cluster file the same arguments name, if they name one (for metrics addresses)."""
    from dfs.common.config import locate

    return locate(cluster, data=data).cluster_config()


async def _shard_status(addr: str, timeout: float):
    import grpc

    from dfs._proto import meta_pb2 as pb
    from dfs._proto import meta_pb2_grpc as pbg
    from dfs.wire import auth

    async with auth.channel(addr) as ch:  # the credentials `status` remembered
        try:
            return await pbg.MetaServiceStub(ch).Status(pb.ShardStatusRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return None


async def _mgmt_probe(addr: str, timeout: float):
    """(answers, the leader it names, the epoch it has applied) of one mgmt replica."""
    import grpc

    from dfs._proto import meta_pb2 as pb
    from dfs._proto import meta_pb2_grpc as pbg
    from dfs.wire import auth

    async with auth.channel(addr) as ch:  # the credentials `status` remembered
        try:
            rep = await pbg.MgmtServiceStub(ch).GetClusterMap(pb.GetClusterMapRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False, None, None
    return True, rep.leader or None, rep.map.epoch if rep.status == 0 else None


def gather(mgmt: list[str], cfg=None, timeout: float = TIMEOUT) -> dict:
    """The cluster's state as `dfs status --json` prints it."""
    from dfs.cli.cluster import _fetch_map
    from dfs.wire import auth

    cmap = _fetch_map(mgmt)
    if cmap is not None:  # the replicas are reached with what reaches mgmt
        auth.remember([a for s in cmap.shards for a in s] + cmap.mgmt, auth.known(mgmt))
    return asyncio.run(_gather(mgmt, cfg, cmap, timeout))


async def _gather(mgmt: list[str], cfg, cmap, timeout: float) -> dict:
    # who to ask: the map when mgmt answered, else the cluster file
    if cfg is not None:
        mgmt_reps = [(m.id, m.address, m.metrics) for m in cfg.mgmt]
    else:
        mgmt_reps = [(i, a, None) for i, a in enumerate(cmap.mgmt if cmap is not None else mgmt)]
    if cmap is not None:
        shard_addrs = cmap.shards
    else:
        shard_addrs = [[r.address for r in s.replicas] for s in cfg.shards] if cfg is not None else []
    shard_metrics = {r.address: r.metrics for s in cfg.shards for r in s.replicas} if cfg is not None else {}
    # replica ids (positions in the map's list differ once dfs admin removed a replica)
    shard_ids = {r.address: r.id for s in cfg.shards for r in s.replicas} if cfg is not None else {}
    data_cfg = {d.id: d for d in cfg.data} if cfg is not None else {}

    async def scrape_(addr: str | None):
        return await asyncio.to_thread(scrape, addr, timeout) if addr else None

    mgmt_probes = [_mgmt_probe(a, timeout) for _, a, _ in mgmt_reps]
    mgmt_scrapes = [scrape_(m) for _, _, m in mgmt_reps]
    flat = [(s, i, a) for s, reps in enumerate(shard_addrs) for i, a in enumerate(reps)]
    statuses = [_shard_status(a, timeout) for _, _, a in flat]
    meta_scrapes = [scrape_(shard_metrics.get(a)) for _, _, a in flat]
    data_ids = sorted(data_cfg) if data_cfg else sorted({t.server for t in cmap.targets.values()} if cmap else ())
    data_scrapes = [scrape_(data_cfg[d].metrics if d in data_cfg else None) for d in data_ids]
    res = await asyncio.gather(*mgmt_probes, *mgmt_scrapes, *statuses, *meta_scrapes, *data_scrapes)
    n1, n2 = len(mgmt_reps), len(flat)
    probes, mscr = res[:n1], res[n1:2 * n1]
    sts, sscr = res[2 * n1:2 * n1 + n2], res[2 * n1 + n2:2 * n1 + 2 * n2]
    dscr = res[2 * n1 + 2 * n2:]

    problems: list[str] = []
    # ---------------------------------------------------------------- mgmt
    named = [p[1] for p in probes if p[1]]
    mgmt_leader = max(set(named), key=named.count) if named else None
    mgmt_out = []
    for (rid, addr, maddr), (ok, _lead, epoch), fams in zip(mgmt_reps, probes, mscr):
        role = raft_role(fams) or ("leader" if ok and addr == mgmt_leader else ("follower" if ok else None))
        mgmt_out.append({"id": rid, "address": addr, "metrics": maddr, "reachable": ok, "role": role,
                         "epoch": epoch, "term": _int(value(fams, "dfs_raft_term")),
                         "commit_index": _int(value(fams, "dfs_raft_commit_index")),
                         "applied_index": _int(value(fams, "dfs_raft_applied_index"))})
        if not ok:
            problems.append(f"mgmt replica {rid} ({addr}) does not answer")
    if mgmt_leader is None:
        problems.append("mgmt has no leader")

    # ---------------------------------------------------------------- shards
    shards_out = []
    for s, reps in enumerate(shard_addrs):
        rows = [(i, a, st, fams) for (ss, i, a), st, fams in zip(flat, sts, sscr) if ss == s]
        lead = next(((i, a, st, f) for i, a, st, f in rows if st is not None and st.role == "leader"), None)
        lead_commit = lead[2].commit_index if lead else None
        replicas = []
        for i, a, st, fams in rows:
            i = st.replica if st is not None else shard_ids.get(a, i)
            # the Raft applied index counts no-op entries as the commit index does; the
            # Status RPC's applied index is the state machine's (behind by trailing no-ops)
            applied = _int(value(fams, "dfs_raft_applied_index"))
            if applied is None and st is not None:
                applied = st.applied_index
            lag = max(0, lead_commit - applied) if lead_commit is not None and applied is not None else None
            r = {"id": i, "address": a, "reachable": st is not None, "role": st.role if st else None,
                 "term": st.term if st else None, "commit_index": st.commit_index if st else None,
                 "applied_index": applied, "state_machine_applied_index": st.applied_index if st else None,
                 "lag": lag, "lagging": st is None or (lag is not None and lag > LAG_ENTRIES),
                 "inodes": _int(value(fams, "dfs_meta_inodes"))}
            replicas.append(r)
            if st is None:
                problems.append(f"shard {s} replica {i} ({a}) does not answer")
            elif r["lagging"]:
                problems.append(f"shard {s} replica {i} lags {lag} entries behind the leader's commit index")
        lf = lead[3] if lead else None
        shards_out.append({"shard": s, "leader": lead[1] if lead else None, "leader_replica": lead[2].replica if lead else None,
                           "term": lead[2].term if lead else None, "commit_index": lead_commit,
                           "inodes": _int(value(lf, "dfs_meta_inodes")), "clients": _int(value(lf, "dfs_meta_clients")),
                           "replicas": replicas})
        if lead is None:
            problems.append(f"shard {s} has no leader")

    # ---------------------------------------------------------------- data
    want = cfg.replicas_per_chain if cfg is not None and cfg.data else None
    targets = [] if cmap is None else sorted(cmap.targets.values(), key=lambda t: t.id)
    if want is None:
        want = min(3, len({t.server for t in targets})) or 1
    chains = [] if cmap is None else [
        {"id": c.id, "version": c.version, "serving": list(c.targets), "syncing": list(c.syncing),
         "degraded": len(c.targets) < want} for c in cmap.chains]
    servers = []
    for sid, fams in zip(data_ids, dscr):
        dc = data_cfg.get(sid)
        addr = dc.address if dc else next((t.address for t in targets if t.server == sid), None)
        tl = []
        for t in targets:
            if t.server != sid:
                continue
            tl.append({"id": t.id, "state": t.state, "total": t.total, "free": t.free,
                       "used": max(0, t.total - t.free) if t.total else None,
                       "chunks": _int(value(fams, "dfs_data_target_chunks", target=str(t.id)))})
            if t.state != "serving":
                problems.append(f"target {t.id} (server {sid}) is {t.state}")
        # up: its metrics endpoint answers; without one, any of its targets is in a chain
        up = fams is not None if dc is not None and dc.metrics else any(t["state"] != "offline" for t in tl)
        servers.append({"id": sid, "address": addr, "metrics": dc.metrics if dc else None, "up": up,
                        "connections": _int(value(fams, "dfs_data_connections")),
                        "read_bytes": _int(total(fams, "dfs_data_read_bytes_total")),
                        "written_bytes": _int(total(fams, "dfs_data_written_bytes_total")),
                        "targets": tl})
    degraded = [c for c in chains if c["degraded"]]
    if degraded:
        problems.append(f"{len(degraded)} degraded chain(s): {[c['id'] for c in degraded]}")
    if cmap is None:
        problems.append("no cluster map from mgmt")
    clients = [sh["clients"] for sh in shards_out if sh["clients"] is not None]
    return {
        "cluster_id": cfg.cluster_id if cfg is not None else None,
        "epoch": cmap.epoch if cmap is not None else None,
        "mgmt_leader": mgmt_leader,
        "mgmt": mgmt_out,
        "shards": shards_out,
        "data_servers": servers,
        "targets": [{"id": t.id, "server": t.server, "address": t.address, "state": t.state, "total": t.total,
                     "free": t.free} for t in targets],
        "chains": chains,
        "degraded_chains": len(degraded),
        # client connections that sent metadata operations in the last minute, on the busiest
        # shard leader: a client process keeps one connection per shard leader it talks to
        "clients": max(clients) if clients else None,
        "problems": problems,
    }


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _s(v) -> str:
    return "-" if v is None else str(v)


def render(st: dict) -> str:
    head = (f"cluster {_s(st['cluster_id'])}   map epoch {_s(st['epoch'])}   mgmt leader {_s(st['mgmt_leader'])}   "
            f"clients {_s(st['clients'])}")
    out = [head, ""]
    out.append(f"{'mgmt':<10} {'address':<22} {'role':<10} {'term':>5} {'commit':>8} {'applied':>8}")
    for m in st["mgmt"]:
        out.append(f"{'  ' + str(m['id']):<10} {m['address']:<22} {(m['role'] or 'down'):<10} {_s(m['term']):>5} "
                   f"{_s(m['commit_index']):>8} {_s(m['applied_index']):>8}")
    for sh in st["shards"]:
        out.append("")
        out.append(f"{'shard ' + str(sh['shard']):<10} {'address':<22} {'role':<10} {'term':>5} {'commit':>8} "
                   f"{'applied':>8} {'lag':>6}   inodes {_s(sh['inodes'])}, clients {_s(sh['clients'])}")
        for r in sh["replicas"]:
            flag = "  LAGGING" if r["lagging"] and r["reachable"] else ""
            out.append(f"{'  ' + str(r['id']):<10} {r['address']:<22} {(r['role'] or 'down'):<10} {_s(r['term']):>5} "
                       f"{_s(r['commit_index']):>8} {_s(r['applied_index']):>8} {_s(r['lag']):>6}{flag}")
    if st["data_servers"]:
        out.append("")
        out.append(f"{'data':<10} {'address':<22} {'state':<10} {'conns':>5} {'read':>10} {'written':>10}")
        for d in st["data_servers"]:
            out.append(f"{'  ' + str(d['id']):<10} {_s(d['address']):<22} {('up' if d['up'] else 'down'):<10} "
                       f"{_s(d['connections']):>5} "
                       f"{_size(d['read_bytes']):>10} {_size(d['written_bytes']):>10}")
        out.append("")
        out.append(f"{'target':<10} {'server':>6} {'state':<9} {'used':>10} {'free':>10} {'total':>10} {'chunks':>8}")
        for d in st["data_servers"]:
            for t in d["targets"]:
                out.append(f"{'  ' + str(t['id']):<10} {d['id']:>6} {t['state']:<9} {_size(t['used']):>10} "
                           f"{_size(t['free']):>10} {_size(t['total']):>10} {_s(t['chunks']):>8}")
        out.append("")
        out.append(f"chains: {len(st['chains'])}, degraded: {st['degraded_chains']}")
        for c in st["chains"]:
            if c["degraded"] or c["syncing"]:
                flag = "  DEGRADED" if c["degraded"] else ""
                out.append(f"  chain {c['id']} v{c['version']}: serving {c['serving']} syncing {c['syncing']}{flag}")
    if st.get("mounts"):
        out.append("mounts on this machine:")
        for m in st["mounts"]:
            snap = f"  snapshot {m['snapshot']} ({m.get('snapshot_state', 'ready')})" if m.get("snapshot") else ""
            out.append(f"  {m['mountpoint']} (pid {m['pid']}){snap}")
            c = m.get("cache")
            if c:  # the node-local cache's counters in that mount (dfs/client/nodecache.py)
                looked = c["hits"] + c["misses"]
                rate = f"{100 * c['hits'] / looked:.0f}%" if looked else "-"
                out.append(f"    node cache: hits {c['hits']} ({rate}, {_size(c['hit_bytes'])}), misses "
                           f"{c['misses']}, stored {_size(c['stored_bytes'])}, evictions {c['evictions']}, "
                           f"corrupt {c['corrupt']}, store errors {c['store_errors']}, "
                           f"capacity {_size(c['capacity'])}")
    out.append("")
    if st["problems"]:
        out.append("problems:")
        out += [f"  {p}" for p in st["problems"]]
    else:
        out.append("healthy")
    return "\n".join(out)


@click.command()
@click.option("--data", default=None, type=click.Path(file_okay=False),
              help="a local cluster's folder (`dfs cluster up --data`)")
@click.option("--cluster", "cluster_path", default=None,
              help="a cluster.toml, the folder holding it, or mgmt host:port[,host:port...]")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--timeout", default=TIMEOUT, show_default=True, type=click.FloatRange(0.1),
              help="seconds to wait for each process")
def status(data: str | None, cluster_path: str | None, as_json: bool, timeout: float) -> None:
    """The whole cluster: Raft roles and lag per shard, mgmt, data servers, targets, chains."""
    from dfs.client.api import find_cluster, find_credentials
    from dfs.wire import auth

    try:
        mgmt = find_cluster(cluster_path, data=data)
        auth.remember(mgmt, find_credentials(cluster_path, data=data))
    except FileNotFoundError as e:
        raise click.ClickException(str(e.strerror or e)) from None
    st = gather(mgmt, _cluster_file(cluster_path, data), timeout)
    from dfs.cli.mount import local_mounts

    st["mounts"] = [m for m in local_mounts() if set(m.get("mgmt") or ()) & set(mgmt)]
    for m in st["mounts"]:  # a snapshot deleted under a snapshot-mode mount (docs/design/snapshots.md)
        if m.get("snapshot_state") == "deleted":
            st["problems"].append(f"mount {m['mountpoint']}: snapshot {m['snapshot']} was deleted "
                                  "(loaded names and cached data stay; other reads answer ESTALE)")
    click.echo(json.dumps(st, indent=1) if as_json else render(st))
