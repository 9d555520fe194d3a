"""The cluster map state machine.

The map is a plain dict::

    {"epoch": n, "cluster_id": str,
     "mgmt":   [{id, address, raft}...],
     "shards": [[{id, address, raft}...]...],   # shard i's replicas, by id
     "member_changes": {shard: {"op", "add", "remove"}},   # membership changes in flight
     "targets": {target_id: {"server", "address", "state", "total", "free"}},
     "chains":  [{"id", "version", "members", "serving", "syncing"}...],
     "data_epoch": e,      # the write epoch of the data servers (1 before any snapshot)
     "snap_next": n,       # the lowest number a new snapshot may take
     "snapshots": {S: {"name", "root", "path", "state", "created"}},
     "snap_usage": {target_id: {S: [exclusive bytes, shared bytes]}}}

A target's ``state`` is "serving", "syncing", "offline" or "draining" (a
target an operator is moving out: it serves, but its chains are being
re-replicated elsewhere; ``"draining": True`` on the target keeps that across
going down and up). A chain's
``members`` are its configured targets in configured order; ``serving`` the
members that serve, head -> tail; ``syncing`` the members being resynced
(they receive forwarded writes after the tail, serve no reads). A chain's id
is its position in the chain table (``chains[i]["id"] == i``); its
``version`` is bumped whenever ``serving`` or ``syncing`` change.

Commands (msgpack arrays), each deterministic, each answered ``[0, epoch]``
or ``[errno, message]``; every command that changes something other than
capacity bumps the epoch by one:

* ``["init", map]`` sets the map if there is none yet (else a no-op);
* ``["set", map]`` replaces the map (keeping targets and chains when the new
  map has none) and bumps the epoch;
* ``["target_down", id]``: the target leaves ``serving``/``syncing`` of every
  chain (those chains' versions bump) and becomes "offline". The last serving
  member of a chain is never removed: it stays (offline) so that clients see
  errors instead of the only copy silently disappearing;
* ``["target_up", id]``: an offline target is back: "syncing", appended to
  ``syncing`` of every chain it is a member of and not serving in (if it is
  still serving in all of them, it is "serving" at once);
* ``["chain_synced", chain_id, target_id, version]``: a syncing target
  finished its resync into a chain at chain version ``version``: it moves to
  the tail of ``serving``; the target is "serving" once it serves in all its
  chains. A no-op unless the chain is still at ``version`` (the resync may
  have missed writes made while the chain was another version) and the
  target still syncs in it;
* ``["capacity", id, total, free]``: capacity report, no epoch bump;
* ``["drain", id]``: the target becomes draining; every chain it is a member
  of and that has no replacement for it yet gets one: a target that is not
  offline or draining and not in the chain (preferring servers the chain does
  not use, then the fewest chain memberships, then the lowest id) joins the
  chain's members and ``syncing`` and is recorded in the chain's
  ``replacing`` (``{new: old}``). When the replacement's resync finishes
  (``chain_synced``), it serves and the drained target leaves the chain in the
  same command. Answered ``[0, epoch, chains left without a replacement]``;
* ``["remove_target", id, replicas, force]``: the target leaves the target
  table. Refused while it is a member of a chain that would keep fewer than
  ``replicas`` serving targets without it, unless ``force`` (never when it is
  a chain's only member). Removing an unknown target is a no-op;
* ``["add_server", server, address, [target ids]]``: targets of a data server
  added to the cluster file after the map was made join the target table,
  "offline" until their first heartbeat (then ``target_up`` makes them
  "serving": they are in no chain yet). A repeat is a no-op; a target id or
  address already used by another server is refused;
* ``["move", chain_id, old, new]``: one chain membership moves from ``old`` to
  ``new`` the way a drain does (``new`` joins as syncing with
  ``replacing[new] = old``; ``old`` leaves when ``new`` is synced). Refused
  while the chain has a move or drain replacement in progress; a no-op once
  ``old`` is no longer a member.

Snapshots (docs/design/snapshots.md; the snapshot coordinator, a metadata
server, sends them through ``Admin``). A snapshot ``S`` holds every change
tagged ``<= S``; ``state`` is "creating", "ready" or "deleting"; the
data servers keep chunk versions for the **live** snapshots, the ready ones
(``live_snapshots``): a creating snapshot's number is at least the data epoch,
so until it is ready nothing is written at an epoch above it and no version
is its to keep; a deleting one's versions may be dropped.

* ``["snap_begin", name, root, path, ts]``: a new snapshot of the tree at
  inode ``root`` (``path`` is the root's path, for humans; ``ts`` the
  coordinator's clock in ns, recorded as ``created``), "creating". Its number
  is ``max(data_epoch, snap_next)``, and ``snap_next`` moves past it: a number
  is never given twice, even after an abort (a shard that began the aborted
  snapshot has moved its epoch on). Answered ``[0, epoch, S]``. The same
  command again (same name, root, path and ts, still creating) answers the
  same ``S``. Refused: a bad name (EINVAL: empty, over NAME_MAX bytes, ``/``
  or NUL, ``.`` or ``..``), a name already used under that root (EEXIST), and
  another snapshot still creating (EBUSY: creations are one at a time, since
  the data epoch moves only when a snapshot is ready), unless that one was
  created more than ``CREATING_TIMEOUT`` before ``ts``: its coordinator is
  gone (every hold and fence has expired long before), and it is dropped;
* ``["snap_ready", S]``: "ready"; the data epoch becomes ``S + 1`` (never
  less than it was). Answered ``[0, epoch, data epoch, live snapshots]``
  (what the coordinator sends the data servers with ``SNAP_RESUME``). A
  repeat is a no-op; ENOENT for an unknown snapshot, EINVAL for a deleting one;
* ``["snap_abort", S]``: a creating snapshot is dropped; anything else is
  left as it is. Answered ``[0, epoch, state, data epoch, live snapshots]``
  with the snapshot's state after the command ("gone", "ready", "deleting"):
  a data server whose hold expired asks this to learn, through the log,
  whether the snapshot it held for was made ready (resume at the new epoch)
  or can no longer be (resume at the old one);
* ``["snap_delete", S]``: a ready snapshot becomes "deleting" (the data
  servers stop keeping its versions); a creating one is refused (EINVAL:
  abort it); unknown or deleting: a no-op;
* ``["snap_forget", S]``: a deleting snapshot is gone (with its usage
  records); a ready or creating one is refused (EINVAL); unknown: a no-op;
* ``["snap_usage", target, {S: [exclusive, shared]}]``: the bytes of the
  chunk versions a target keeps per live snapshot (from heartbeats: only
  that snapshot reads them / it and another snapshot do); no epoch bump.

Metadata shards (``dfs admin add-meta-replica`` / ``remove-meta-replica`` /
``replace-meta-replica`` / ``add-meta-shard``; the Raft membership itself
changes in the shard's group, these keep the map in step with it):

* ``["member_begin", shard, change]``: records that a membership change of
  the shard is in flight (``change`` = ``{"op": "add"|"remove"|"replace",
  "add": raft address or None, "remove": raft address or None}``), so that no
  other change of that shard starts until it ends. The same change again is a
  no-op (the command that resumes it); another one is refused, except the
  removal of the replica an in-flight change adds (abandoning that add).
  Answered ``[0, epoch, change in flight]``. No epoch bump (clients do not
  route by it);
* ``["member_end", shard, change]``: the change is over (a no-op if another
  one is recorded). No epoch bump;
* ``["member_add", shard, {id, address, raft}]``: a replica joins the shard's
  list (kept in id order). A repeat is a no-op; an id or address already used
  is refused;
* ``["member_remove", shard, raft]``: the replica with that Raft address
  leaves the list (absent: a no-op; never the last one);
* ``["add_shard", shard, [replicas]]``: a new shard ``shard`` (= the number
  of shards: they are numbered 0..S-1 and never removed) with these
  replicas. The same shard again is a no-op; anything else is refused.
"""

from __future__ import annotations

import copy
import errno

import msgpack

from dfs.common.limits import NAME_MAX
from dfs.consensus.api import StateMachine
from dfs.kv import KV, MemoryKV, RocksKV, WriteBatch

K_APPLIED = b"M:applied"
K_MAP = b"C:map"

SERVING = "serving"
SYNCING = "syncing"
OFFLINE = "offline"
DRAINING = "draining"

CREATING = "creating"
READY = "ready"
DELETING = "deleting"
CREATING_TIMEOUT = 600 * 10**9  # ns: a snapshot creating for longer has lost its coordinator
MAX_EPOCH = 0xFFFFFFFE  # data epochs travel as u32 on the data plane


def _unpack(b: bytes):
    return msgpack.unpackb(b, raw=False, strict_map_key=False)


def order_targets(servers: list[tuple[int, list[int]]]) -> list[int]:
    """Target ids round-robin over servers (sorted by id): consecutive targets
    are on different servers whenever the counts allow it."""
    per = [sorted(ts) for _, ts in sorted(servers)]
    out = []
    for r in range(max((len(t) for t in per), default=0)):
        out.extend(t[r] for t in per if r < len(t))
    return out


def build_chains(servers: list[tuple[int, list[int]]], replicas: int) -> list[dict]:
    """The initial chain table: N targets -> N chains, chain j = ordered[j .. j+R-1 mod N]
    with R = replicas capped at the number of servers (and of targets)."""
    order = order_targets(servers)
    n = len(order)
    if n == 0:
        return []
    nservers = sum(1 for _, ts in servers if ts)
    r = max(1, min(replicas, nservers, n))
    chains = []
    for j in range(n):
        members = [order[(j + k) % n] for k in range(r)]
        chains.append({"id": j, "version": 1, "members": members, "serving": list(members), "syncing": []})
    return chains


def targets_from_servers(servers: list[tuple[int, str, list[int]]]) -> dict[int, dict]:
    """The initial target table: every target serving, capacity unknown (0)."""
    return {tid: {"server": sid, "address": addr, "state": SERVING, "total": 0, "free": 0}
            for sid, addr, tids in servers for tid in tids}


class CommandError(Exception):
    """A refused command: nothing changed; answered ``[errno, message]``."""

    def __init__(self, message: str, code: int = errno.EINVAL) -> None:
        super().__init__(message)
        self.errno = code


def live_snapshots(m: dict) -> list[int]:
    """The snapshots whose chunk versions the data servers keep: the ready ones."""
    return sorted(s for s, x in m.get("snapshots", {}).items() if x["state"] == READY)


# ------------------------------------------------------------------ commands
# Each takes the (private copy of the) map and returns (changed, bump epoch).

def _target(m: dict, tid) -> dict:
    t = m["targets"].get(tid) if isinstance(tid, int) else None
    if t is None:
        raise CommandError(f"no target {tid!r}")
    return t


def _serving_everywhere(m: dict, tid: int) -> bool:
    return all(tid in c["serving"] for c in m["chains"] if tid in c["members"])


def _target_down(m: dict, tid: int) -> tuple[bool, bool]:
    t = _target(m, tid)
    changed = False
    for c in m["chains"]:
        touched = False
        if tid in c["syncing"]:
            c["syncing"].remove(tid)
            touched = True
        if tid in c["serving"] and len(c["serving"]) > 1:
            c["serving"].remove(tid)
            touched = True
        if touched:
            c["version"] += 1
            changed = True
    if t["state"] != OFFLINE:
        t["state"] = OFFLINE
        changed = True
    return changed, changed


def _target_up(m: dict, tid: int) -> tuple[bool, bool]:
    t = _target(m, tid)
    if t["state"] != OFFLINE:
        return False, False
    for c in m["chains"]:
        if tid in c["members"] and tid not in c["serving"] and tid not in c["syncing"]:
            c["syncing"].append(tid)
            c["version"] += 1
    t["state"] = _up_state(t, SERVING if _serving_everywhere(m, tid) else SYNCING)
    return True, True


def _chain_synced(m: dict, cid: int, tid: int, version: int) -> tuple[bool, bool]:
    t = _target(m, tid)
    if not isinstance(cid, int) or not 0 <= cid < len(m["chains"]):
        raise CommandError(f"no chain {cid!r}")
    if not isinstance(version, int):
        raise CommandError(f"bad chain version {version!r}")
    c = m["chains"][cid]
    if tid not in c["syncing"] or c["version"] != version:
        return False, False  # a repeat, the target went down meanwhile, or a resync of an older version
    c["syncing"].remove(tid)
    c["serving"].append(tid)
    c["version"] += 1
    if _serving_everywhere(m, tid):
        t["state"] = _up_state(t, SERVING)
    old = c.get("replacing", {}).pop(tid, None)
    if old is not None and old in c["members"]:  # a drained target's replacement serves: it goes
        for k in ("members", "serving", "syncing"):
            if old in c[k]:
                c[k].remove(old)
    return True, True


def _up_state(t: dict, state: str) -> str:
    return DRAINING if state == SERVING and t.get("draining") else state


def _replacement(m: dict, c: dict, old: int) -> int | None:
    """A target to take ``old``'s place in chain ``c`` (deterministic), or None."""
    used_servers = {m["targets"][x]["server"] for x in c["members"] if x != old and x in m["targets"]}
    load: dict[int, int] = {}
    for ch in m["chains"]:
        for x in ch["members"]:
            load[x] = load.get(x, 0) + 1
    cands = [(t["server"] in used_servers, load.get(tid, 0), tid) for tid, t in m["targets"].items()
             if tid not in c["members"] and not t.get("draining") and t["state"] != OFFLINE]
    return min(cands)[2] if cands else None


def _drain(m: dict, tid: int) -> tuple[bool, bool, list[int]]:
    t = _target(m, tid)
    changed = False
    if not t.get("draining"):
        t["draining"] = True
        changed = True
    if t["state"] == SERVING:
        t["state"] = DRAINING
        changed = True
    stuck = []
    for c in m["chains"]:
        if tid not in c["members"] or tid in c.get("replacing", {}).values():
            continue
        new = _replacement(m, c, tid)
        if new is None:
            stuck.append(c["id"])
            continue
        c["members"].append(new)
        c["syncing"].append(new)
        c.setdefault("replacing", {})[new] = tid
        c["version"] += 1
        changed = True
        nt = m["targets"][new]
        if nt["state"] == SERVING:
            nt["state"] = SYNCING
    return changed, changed, stuck


def _remove_target(m: dict, tid: int, replicas: int, force: bool) -> tuple[bool, bool]:
    if not isinstance(tid, int) or tid not in m["targets"]:
        return False, False
    for c in m["chains"]:
        if tid not in c["members"]:
            continue
        if len(c["members"]) == 1:
            raise CommandError(f"target {tid} is the only member of chain {c['id']}")
        left = len([x for x in c["serving"] if x != tid])
        if left < replicas and not force:
            raise CommandError(f"chain {c['id']} would keep {left} serving targets of {replicas} "
                               f"without target {tid} (drain it first, or force)")
        if left == 0:
            raise CommandError(f"target {tid} is the only serving target of chain {c['id']}")
    for c in m["chains"]:
        touched = False
        for k in ("members", "serving", "syncing"):
            if tid in c[k]:
                c[k].remove(tid)
                touched = True
        rep = c.get("replacing", {})
        for new in [n for n, o in rep.items() if o == tid or n == tid]:
            del rep[new]
        if touched:
            c["version"] += 1
    del m["targets"][tid]
    m.get("snap_usage", {}).pop(tid, None)
    return True, True


def _add_server(m: dict, sid: int, address: str, tids: list[int]) -> tuple[bool, bool]:
    for tid, t in m["targets"].items():
        if t["address"] == address and t["server"] != sid:
            raise CommandError(f"address {address} is data server {t['server']}'s")
    changed = False
    for tid in tids:
        t = m["targets"].get(tid)
        if t is None:
            m["targets"][tid] = {"server": sid, "address": address, "state": OFFLINE, "total": 0, "free": 0}
            changed = True
        elif t["server"] != sid:
            raise CommandError(f"target {tid} is data server {t['server']}'s")
    return changed, changed


def _move(m: dict, cid: int, old: int, new: int) -> tuple[bool, bool]:
    if not isinstance(cid, int) or not 0 <= cid < len(m["chains"]):
        raise CommandError(f"no chain {cid!r}")
    c = m["chains"][cid]
    nt = _target(m, new)
    rep = c.setdefault("replacing", {})
    if old not in c["members"] or rep.get(new) == old:
        return False, False  # done, or a repeat
    if rep:
        raise CommandError(f"chain {cid} has a move in progress")
    if new in c["members"]:
        raise CommandError(f"target {new} is already in chain {cid}")
    if nt["state"] == OFFLINE or nt.get("draining"):
        raise CommandError(f"target {new} is {nt['state']}")
    c["members"].append(new)
    c["syncing"].append(new)
    rep[new] = old
    c["version"] += 1
    if nt["state"] == SERVING:
        nt["state"] = SYNCING
    return True, True


def _capacity(m: dict, tid: int, total: int, free: int) -> tuple[bool, bool]:
    t = _target(m, tid)
    if (t["total"], t["free"]) == (total, free):
        return False, False
    t["total"], t["free"] = int(total), int(free)
    return True, False


def _shard_index(m: dict, shard) -> int:
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < len(m["shards"]):
        raise CommandError(f"no shard {shard!r}")
    return shard


def _describe(change: dict) -> str:
    op = change.get("op")
    if op == "replace":
        return f"replacing {change.get('remove')} by {change.get('add')}"
    return f"{'adding' if op == 'add' else 'removing'} {change.get('add') or change.get('remove')}"


def _member_begin(m: dict, shard: int, change: dict) -> tuple[bool, bool, dict]:
    _shard_index(m, shard)
    if not isinstance(change, dict) or change.get("op") not in ("add", "remove", "replace"):
        raise CommandError(f"not a membership change: {change!r}")
    changes = m.setdefault("member_changes", {})
    cur = changes.get(shard)
    if cur == change:
        return False, False, cur
    if cur is not None and not (change["op"] == "remove" and change.get("remove") == cur.get("add")):
        raise CommandError(f"shard {shard}: a membership change is in flight ({_describe(cur)}): run that "
                           f"command again to finish it, or remove the replica it adds to abandon it")
    changes[shard] = change
    return True, False, change


def _member_end(m: dict, shard: int, change: dict) -> tuple[bool, bool]:
    changes = m.get("member_changes", {})
    if changes.get(shard) != change:
        return False, False
    del changes[shard]
    return True, False


def _check_replica(rep) -> dict:
    if not isinstance(rep, dict) or not all(isinstance(rep.get(k), str) and rep[k] for k in ("address", "raft")) \
            or isinstance(rep.get("id"), bool) or not isinstance(rep.get("id"), int):
        raise CommandError(f"a replica is {{id, address, raft}}, not {rep!r}")
    return {"id": rep["id"], "address": rep["address"], "raft": rep["raft"]}


def _used_by(m: dict, addr: str) -> str | None:
    for i, reps in enumerate(m["shards"]):
        for r in reps:
            if addr in (r["address"], r["raft"]):
                return f"shard {i} replica {r['id']}"
    return None


def _member_add(m: dict, shard: int, rep: dict) -> tuple[bool, bool]:
    reps = m["shards"][_shard_index(m, shard)]
    rep = _check_replica(rep)
    for r in reps:
        if r["raft"] == rep["raft"]:
            if r == rep:
                return False, False
            raise CommandError(f"raft address {rep['raft']} is shard {shard} replica {r['id']}'s")
        if r["id"] == rep["id"]:
            raise CommandError(f"shard {shard} has a replica {rep['id']} already ({r['address']})")
    for addr in (rep["address"], rep["raft"]):
        owner = _used_by(m, addr)
        if owner is not None:
            raise CommandError(f"address {addr} is {owner}'s")
    reps.append(rep)
    reps.sort(key=lambda r: r["id"])
    return True, True


def _member_remove(m: dict, shard: int, raft: str) -> tuple[bool, bool]:
    reps = m["shards"][_shard_index(m, shard)]
    left = [r for r in reps if r["raft"] != raft]
    if len(left) == len(reps):
        return False, False
    if not left:
        raise CommandError(f"{raft} is the only replica of shard {shard}")
    m["shards"][shard] = left
    return True, True


def _add_shard(m: dict, shard: int, reps: list) -> tuple[bool, bool]:
    if not isinstance(reps, list) or not reps:
        raise CommandError("a new shard needs replicas")
    reps = sorted((_check_replica(r) for r in reps), key=lambda r: r["id"])
    n = len(m["shards"])
    if isinstance(shard, int) and not isinstance(shard, bool) and shard < n:
        if shard >= 0 and {r["raft"] for r in m["shards"][shard]} == {r["raft"] for r in reps}:
            return False, False  # a repeat
        raise CommandError(f"shard {shard} exists already (the cluster has {n}; the next is {n})")
    if shard != n:
        raise CommandError(f"the next shard is {n}, not {shard!r}")
    for r in reps:
        for addr in (r["address"], r["raft"]):
            owner = _used_by(m, addr)
            if owner is not None:
                raise CommandError(f"address {addr} is {owner}'s")
    m["shards"].append(reps)
    return True, True


# ------------------------------------------------------------------ snapshots

def _snap_name(name) -> str:
    if not isinstance(name, str) or not name or "/" in name or "\0" in name or name in (".", ".."):
        raise CommandError(f"bad snapshot name {name!r}")
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX:
        raise CommandError(f"snapshot name longer than {NAME_MAX} bytes")
    return name


def _int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise CommandError(f"bad {what} {v!r}")
    return v


def _snap(m: dict, s) -> dict | None:
    return m["snapshots"].get(_int(s, "snapshot"))


def _snap_begin(m: dict, name, root, path, ts) -> tuple[bool, bool, int]:
    name = _snap_name(name)
    root, ts = _int(root, "root inode"), _int(ts, "timestamp")
    if not isinstance(path, str):
        raise CommandError(f"bad path {path!r}")
    snaps = m["snapshots"]
    for s, x in sorted(snaps.items()):
        if x["name"] == name and x["root"] == root:
            if x["state"] == CREATING and x["path"] == path and x["created"] == ts:
                return False, False, s  # the same command again
            raise CommandError(f"snapshot {name!r} of inode {root} exists (number {s}, {x['state']})",
                               errno.EEXIST)
    for s, x in sorted(snaps.items()):
        if x["state"] == CREATING:
            if ts - x["created"] <= CREATING_TIMEOUT:
                raise CommandError(f"snapshot {x['name']!r} ({s}) is being created", errno.EBUSY)
            del snaps[s]  # its coordinator is long gone
    s = max(m["data_epoch"], m["snap_next"])
    if s > MAX_EPOCH:
        raise CommandError("snapshot numbers exhausted", errno.EOVERFLOW)
    m["snap_next"] = s + 1
    snaps[s] = {"name": name, "root": root, "path": path, "state": CREATING, "created": ts}
    return True, True, s


def _snap_ready(m: dict, s) -> tuple[bool, bool, int, list[int]]:
    x = _snap(m, s)
    if x is None:
        raise CommandError(f"no snapshot {s}", errno.ENOENT)
    if x["state"] == DELETING:
        raise CommandError(f"snapshot {s} is being deleted")
    changed = x["state"] != READY
    x["state"] = READY
    if m["data_epoch"] < s + 1:
        m["data_epoch"] = s + 1
        changed = True
    return changed, changed, m["data_epoch"], live_snapshots(m)


def _snap_abort(m: dict, s) -> tuple[bool, bool, str, int, list[int]]:
    x = _snap(m, s)
    changed = x is not None and x["state"] == CREATING
    if changed:
        del m["snapshots"][s]
        x = None
    return changed, changed, "gone" if x is None else x["state"], m["data_epoch"], live_snapshots(m)


def _snap_delete(m: dict, s) -> tuple[bool, bool]:
    x = _snap(m, s)
    if x is None or x["state"] == DELETING:
        return False, False
    if x["state"] == CREATING:
        raise CommandError(f"snapshot {s} is being created: abort it")
    x["state"] = DELETING
    return True, True


def _snap_forget(m: dict, s) -> tuple[bool, bool]:
    x = _snap(m, s)
    if x is None:
        return False, False
    if x["state"] != DELETING:
        raise CommandError(f"snapshot {s} is {x['state']}: delete it first")
    del m["snapshots"][s]
    for tid, per in list(m["snap_usage"].items()):
        per.pop(s, None)
        if not per:
            del m["snap_usage"][tid]
    return True, True


def _snap_usage(m: dict, tid, usage) -> tuple[bool, bool]:
    _target(m, tid)
    if not isinstance(usage, dict):
        raise CommandError(f"bad usage {usage!r}")
    new = {}
    for s, v in usage.items():
        if not (isinstance(v, (list, tuple)) and len(v) == 2):
            raise CommandError(f"bad usage of snapshot {s!r}: {v!r}")
        new[_int(s, "snapshot")] = [_int(v[0], "byte count"), _int(v[1], "byte count")]
    if m["snap_usage"].get(tid, {}) == new:
        return False, False
    if new:
        m["snap_usage"][tid] = new
    else:
        m["snap_usage"].pop(tid, None)
    return True, False


COMMANDS = {
    "target_down": _target_down,
    "target_up": _target_up,
    "chain_synced": _chain_synced,
    "capacity": _capacity,
    "drain": _drain,
    "remove_target": _remove_target,
    "add_server": _add_server,
    "move": _move,
    "member_begin": _member_begin,
    "member_end": _member_end,
    "member_add": _member_add,
    "member_remove": _member_remove,
    "add_shard": _add_shard,
    "snap_begin": _snap_begin,
    "snap_ready": _snap_ready,
    "snap_abort": _snap_abort,
    "snap_delete": _snap_delete,
    "snap_forget": _snap_forget,
    "snap_usage": _snap_usage,
}

# keys of the map that ``set`` (a new shard/mgmt layout) keeps, and their values in a map without them
_KEPT = {"targets": dict, "chains": list, "data_epoch": lambda: 1, "snap_next": lambda: 1, "snapshots": dict,
         "snap_usage": dict}


class MgmtStore(StateMachine):
    def __init__(self, path: str | None) -> None:
        self.path = path
        self.kv: KV = MemoryKV() if path is None else RocksKV(path)
        b = self.kv.get(K_APPLIED)
        self._applied = int.from_bytes(b, "big") if b else 0

    def applied_index(self) -> int:
        return self._applied

    def cluster_map(self) -> dict | None:
        b = self.kv.get(K_MAP)
        if b is None:
            return None
        m = _unpack(b)
        for k, default in _KEPT.items():
            m.setdefault(k, default())
        return m

    def apply(self, index: int, commands: list[bytes]) -> list[bytes]:
        batch = WriteBatch()
        results = []
        cur = self.cluster_map()
        dirty = False
        for raw in commands:
            try:
                cmd = msgpack.unpackb(raw, raw=False, strict_map_key=False)
                kind, args = cmd[0], cmd[1:]
                if kind == "init" and cur is not None:
                    results.append(msgpack.packb([0, cur["epoch"]]))
                    continue
                if kind in ("init", "set"):
                    (m,) = args
                    m = dict(m)
                    if cur is not None and "targets" not in m:
                        m["targets"] = cur.get("targets", {})
                        m["chains"] = cur.get("chains", [])
                    for k, default in _KEPT.items():
                        if k not in m:
                            m[k] = cur[k] if cur is not None and k in cur else default()
                    m["epoch"] = (cur["epoch"] if cur else 0) + 1
                    cur = m
                    dirty = True
                    results.append(msgpack.packb([0, m["epoch"]]))
                    continue
                if cur is None:
                    raise CommandError("no cluster map yet")
                fn = COMMANDS.get(kind)
                if fn is None:
                    raise CommandError(f"unknown command {kind!r}")
                new = copy.deepcopy(cur)  # a failing command leaves no trace
                changed, bump, *extra = fn(new, *args)
                if changed:
                    if bump:
                        new["epoch"] += 1
                    cur = new
                    dirty = True
                results.append(msgpack.packb([0, cur["epoch"], *extra]))
            except CommandError as e:
                results.append(msgpack.packb([e.errno, str(e)]))
            except Exception as e:  # deterministic: same on every replica
                results.append(msgpack.packb([errno.EINVAL, str(e)]))
        if dirty:
            batch.put(K_MAP, msgpack.packb(cur))
        batch.put(K_APPLIED, index.to_bytes(8, "big"))
        self.kv.write(batch)
        self._applied = index
        return results

    # ------------------------------------------------------------------ snapshots
    def snapshot(self, path: str) -> None:
        self.kv.checkpoint(path)

    def restore(self, path: str) -> None:
        src = MemoryKV(path) if isinstance(self.kv, MemoryKV) else RocksKV(path)
        b = WriteBatch()
        for k, _ in list(self.kv.items()):
            b.delete(k)
        for k, v in src.items():
            b.put(k, v)
        src.close()
        self.kv.write(b, sync=True)
        bb = self.kv.get(K_APPLIED)
        self._applied = int.from_bytes(bb, "big") if bb else 0
