"""Correctness under load: concurrent clients against a model of the namespace.

    dfs bench stress [--data DIR | --cluster FILE | --mgmt ADDRS] [--clients 4] [--duration 30]
                     [--seed N] [--chaos] [--json out.json]

Without a cluster argument it starts its own LocalCluster in a temporary folder
(``--shards`` x ``--replicas`` metadata, 3 mgmt replicas, ``--data-servers`` data
servers, chains of 3). ``--clients`` threads, each with its own ``dfs.connect()``
client, create files, write them (random offsets and sizes, bytes derived from
``--seed``, the client and the op number), truncate, read back, rename (files and
directories, across directories that mkdir spread over the shards, replacing
existing names too), hard-link, unlink, mkdir and rmdir, and try operations that
must fail with a given errno, for ``--duration`` seconds. Files live in small
directories whose layout is 64 KiB chunks striped over 4 chains, half of them
keeping small files inline in the metadata, so sizes cross both boundaries.

The model stays exact because the namespace is partitioned:

* ``c<i>/`` belongs to client ``i``: only it changes names there;
* ``shared/`` is where clients meet (renames in and out of it, links into and
  out of it, writes, renames between its directories, unlinks): every operation
  there, and every operation on a file that has a name outside the caller's own
  area, runs under one lock of this tool, with that client's caches dropped
  first (another client changed the names since).

Each operation's result is checked against the model: an errno the model
predicts is fine, anything else is a difference. A failure with a retryable
errno (the client library already retried with the same request id until its
deadline) leaves the outcome unknown: the tool reads the state back to decide
whether the operation took effect, and repeats it if it did not (writes and
truncates are idempotent and are simply repeated).

``--chaos`` (own cluster only): a thread kill -9's a random server process every
``--chaos-every`` seconds on average -- a metadata replica (often the leader;
at most one per shard down at a time), a data server (one at a time, and only
when every target serves), or an mgmt replica (one at a time) -- and restarts it
``--chaos-down`` seconds later on average.

``--linearizable``: instead, a linearizability check (dfs.stress.history): the
clients do whole-file puts and gets, O_EXCL creates, unlinks, renames, stats and
listings of a few names in ``--groups`` groups of two directories, recording each
operation's call and return times; with ``--chaos`` a nemesis (dfs.stress.nemesis)
kills (-9, then restarts) or pauses (SIGSTOP, then SIGCONT) a metadata leader or
follower, an mgmt replica or a data server about every ``--chaos-every`` seconds for
about ``--chaos-down`` seconds, one member of a group at a time. At the end the
history is checked against the ``Files`` model (dfs.stress.linearizable); printed:
ops per kind, unknown outcomes, the fault schedule and the verdict, with the
checker's explanation on failure (and the history written to ``--history``). The
exit status is 1 if the history is not linearizable, 2 if the check ran out of
``--check-timeout``. Network partitions need network namespaces: tests/netns.

At the end the cluster is brought back to health, then every directory and file
is compared with the model: names, types, sizes, full contents, link counts
(files: their names; directories: 2 + subdirectories), and that the names of one
file share one inode. Printed: ops per kind, ops/s, retries, kills, and the
differences; ``--json`` writes the same. The exit status is 1 on any difference.

The clients, the model, the check and the chaos driver are ``dfs.stress``
(the tests use them too); this module is the command: its own cluster
(``dfs.local``), the progress bar, the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

from dfs.stress.chaos import Chaos
from dfs.stress.verify import verify, wait_usable
from dfs.stress.worker import Run, Stats, Worker


def summary(res: dict) -> str:
    lines = [f"{'op':<16}{'ok':>9}{'retries':>9}{'resolved':>10}"]
    for k in sorted(set(res["ops"]) | set(res["retries"])):
        lines.append(f"{k:<16}{res['ops'].get(k, 0):>9}{res['retries'].get(k, 0):>9}{res['resolved'].get(k, 0):>10}")
    lines.append(f"{'total':<16}{res['ops_total']:>9}   {res['ops_per_s']:,.1f} ops/s over {res['elapsed_s']:.1f} s "
                 f"by {res['config']['clients']} clients")
    if res["expected_errors"]:
        lines.append("predicted errors: " + ", ".join(f"{k} x{v}" for k, v in sorted(res["expected_errors"].items())))
    if res.get("chaos"):
        ch = res["chaos"]
        lines.append("chaos: kills " + (", ".join(f"{k} x{v}" for k, v in sorted(ch["kills"].items())) or "none"))
    v = res["verified"]
    lines.append(f"verified: {v.get('dirs', 0)} directories, {v.get('names', 0)} file names, "
                 f"{v.get('files', 0)} files, {v.get('bytes', 0):,} bytes; directories per shard: "
                 + ", ".join(f"{k.rsplit(' ', 1)[1]}: {n}" for k, n in sorted(v.items()) if k.startswith("dirs on")))
    lines.append(f"differences: {res['differences_count']}")
    for x in res["differences"][:20]:
        lines.append("  " + json.dumps(x, default=str))
    return "\n".join(lines)


def own_cluster(a, log):
    """A LocalCluster in a temporary folder: (cluster, folder)."""
    from dfs.local.cluster import LocalCluster

    tmp = tempfile.mkdtemp(prefix="dfs-stress-", dir=a.dir or None)
    log(f"starting a LocalCluster in {tmp}: {a.shards} shards x {a.replicas}, 3 mgmt, "
        f"{a.data_servers} data servers")
    cluster = LocalCluster(os.path.join(tmp, "cluster"), shards=a.shards, replicas=a.replicas,
                           data_servers=a.data_servers, chain_replicas=min(3, a.data_servers), metrics=False)
    cluster.start(180.0)
    return cluster, tmp


def linearizable(a, log=print) -> dict:
    """The --linearizable run: record, with the nemesis if --chaos, then check."""
    from collections import Counter

    from dfs.stress.history import Recorder, check, describe, dump
    from dfs.stress.nemesis import Nemesis, plan

    cluster = tmp = None
    nem = None
    if a.data or a.cluster or a.mgmt:
        connect_kw = {"data": a.data or None, "mgmt": a.mgmt or None, **({"cluster": a.cluster} if a.cluster else {})}
    else:
        cluster, tmp = own_cluster(a, log)
        connect_kw = {"mgmt": cluster.mgmt_addresses}
    root = f"/lin-{a.seed}-{os.getpid()}-{int(time.time())}"
    groups = a.groups or max(1, a.clients // 2)
    rec = Recorder(connect_kw, root, groups=groups, clients=a.clients, seed=a.seed)
    try:
        rec.setup()
        t0 = time.monotonic()
        rec.start()
        if a.chaos:
            n = max(1, int(a.duration / a.chaos_every))
            schedule = plan(random.Random(f"{a.seed}/schedule"), n, kinds=("kill", "pause"), first=a.chaos_every / 2,
                            every=a.chaos_every, length=a.chaos_down)
            nem = Nemesis(cluster, schedule, clock=lambda: time.monotonic() - t0,
                          rng=random.Random(f"{a.seed}/nemesis"), max_s=max(10.0, 3 * a.chaos_down), wait_s=30.0)
            nem.start()
        progress_lin(rec, nem, a, t0)
        if nem is not None:
            nem.stop.set()
            nem.join(300)
        rec.join(300)
        elapsed = time.monotonic() - t0
        if rec.failure is not None:
            raise RuntimeError(f"a recording client failed: {rec.failure!r}") from rec.failure
        ops = list(rec.ops)
        log(f"checking {len(ops)} operations ...")
        c0 = time.monotonic()
        res = check(ops, timeout=a.check_timeout)
        out = {
            "config": {"clients": a.clients, "groups": groups, "duration_s": a.duration, "seed": a.seed,
                       "chaos": a.chaos, "cluster": "own" if cluster is not None else "external", "root": root},
            "elapsed_s": round(elapsed, 3),
            "ops": dict(sorted(Counter(op.kind for op in ops).items())),
            "ops_total": len(ops),
            "ops_per_s": round(len(ops) / elapsed, 1) if elapsed else 0.0,
            "unknown": dict(rec.errors.most_common()),
            "verdict": "linearizable" if res.ok else ("undecided" if res.timed_out else "not linearizable"),
            "check_s": round(time.monotonic() - c0, 3),
            "explanation": None if res.ok else describe(res, ops),
            "faults": [] if nem is None else [f.describe() for f in nem.schedule],
            "nemesis_error": repr(nem.error) if nem is not None and nem.error else None,
        }
        if not res.ok and a.history:
            with open(a.history, "w") as f:
                json.dump({"ops": dump(ops), "schedule": out["faults"]}, f)
        return out
    finally:
        rec.stop.set()
        if nem is not None:
            nem.stop.set()
        if cluster is not None:
            cluster.stop()
        if tmp is not None and not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            log(f"cluster folder kept: {tmp}")


def progress_lin(rec, nem, a, t0: float) -> None:
    from tqdm import tqdm

    end = t0 + a.duration
    with tqdm(total=int(a.duration), unit="s", disable=not a.progress, file=sys.stderr,
              bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s {postfix}") as bar:
        while time.monotonic() < end and rec.failure is None:
            rec.stop.wait(min(0.5, max(0.0, end - time.monotonic())))  # the duration's pacing
            bar.n = min(int(a.duration), int(time.monotonic() - t0))
            post = {"ops": rec.ops_done, "unknown": sum(rec.errors.values())}
            if nem is not None:
                post["faults"] = len(nem.injected)
            bar.set_postfix(post, refresh=False)
            bar.refresh()


def summary_lin(res: dict) -> str:
    lines = ["ops: " + ", ".join(f"{k} {v}" for k, v in res["ops"].items())
             + f"; {res['ops_total']} in {res['elapsed_s']:.1f} s ({res['ops_per_s']:,.1f} ops/s)"]
    if res["unknown"]:
        lines.append("unknown outcomes: " + ", ".join(f"{k} x{v}" for k, v in res["unknown"].items()))
    if res["faults"]:
        lines.append("faults:")
        lines += [f"  {f}" for f in res["faults"]]
    if res["nemesis_error"]:
        lines.append(f"nemesis error: {res['nemesis_error']}")
    lines.append(f"verdict: {res['verdict']} (checked in {res['check_s']:.1f} s)")
    if res["explanation"]:
        lines.append(res["explanation"])
    return "\n".join(lines)


def stress(a, log=print) -> dict:
    cluster = None
    tmp = None
    if a.data or a.cluster or a.mgmt:
        connect_kw = {"data": a.data or None, "mgmt": a.mgmt or None}
        if a.cluster:
            connect_kw["cluster"] = a.cluster
    else:
        cluster, tmp = own_cluster(a, log)
        connect_kw = {"mgmt": cluster.mgmt_addresses}
    root = f"/stress-{a.seed}-{os.getpid()}-{int(time.time())}"
    run = Run(a.seed, a.clients, connect_kw, root)
    chaos = None
    workers: list[Worker] = []
    try:
        with run.connect() as fs:
            run.setup(fs)
        workers = [Worker(i, run) for i in range(a.clients)]
        if a.chaos:
            chaos = Chaos(cluster, random.Random(f"{a.seed}/chaos"), run.stop, a.chaos_every, a.chaos_down,
                          run.now)
        t0 = run.t0 = time.monotonic()
        for w in workers:
            w.start()
        if chaos:
            chaos.start()
            chaos.first.wait()
        progress(run, workers, chaos, a)
        run.stop.set()
        for w in workers:
            w.join()
        elapsed = time.monotonic() - t0
        if chaos:
            chaos.join()
        if cluster is not None:
            for p in cluster.procs:  # a process that died by itself is part of the report too
                if p.popen is not None and not p.alive:
                    run.diffs.add(kind="cluster", what=f"{p.name} exited with {p.popen.returncode}")
                    cluster.restart(p)
            cluster.wait_healthy(180.0)
        stats = Stats()
        for w in workers:
            stats.merge(w.stats)
        with run.connect(ttl=0) as fs:
            wait_usable(fs, root)
            checked = verify(fs, root, run.model, run.diffs)
        total = sum(stats.ops.values())
        res = {
            "config": {"clients": a.clients, "duration_s": a.duration, "seed": a.seed, "chaos": a.chaos,
                       "cluster": "own" if cluster is not None else "external", "root": root,
                       **({"shards": a.shards, "replicas": a.replicas, "data_servers": a.data_servers}
                          if cluster is not None else {})},
            "elapsed_s": round(elapsed, 3),
            "ops": dict(sorted(stats.ops.items())),
            "ops_total": total,
            "ops_per_s": round(total / elapsed, 1) if elapsed else 0.0,
            "expected_errors": dict(sorted(stats.expected.items())),
            "retries": dict(sorted(stats.retries.items())),
            "resolved": dict(sorted(stats.resolved.items())),
            "transient_errors": dict(stats.transient.most_common(30)),
            "verified": checked,
            "differences_count": run.diffs.count,
            "differences": run.diffs.items,
        }
        if chaos:
            res["chaos"] = {"kills": dict(chaos.kills), "events": chaos.events,
                            "error": repr(chaos.error) if chaos.error else None}
        return res
    finally:
        run.stop.set()
        if cluster is not None:
            cluster.stop()
        if tmp is not None and not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            log(f"cluster folder kept: {tmp}")


def progress(run: Run, workers: list[Worker], chaos: Chaos | None, a) -> None:
    """Until the duration is over (or every worker stopped), with a progress bar."""
    from tqdm import tqdm

    end = time.monotonic() + a.duration
    with tqdm(total=int(a.duration), unit="s", disable=not a.progress, file=sys.stderr,
              bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s {postfix}") as bar:
        while True:
            left = end - time.monotonic()
            if left <= 0 or not any(w.is_alive() for w in workers):
                break
            run.stop.wait(min(0.5, left))  # the duration's pacing
            bar.n = min(int(a.duration), int(a.duration - max(0.0, end - time.monotonic())))
            post = {"ops": sum(w.opno for w in workers), "diffs": run.diffs.count}
            if chaos:
                post["kills"] = sum(chaos.kills.values())
            bar.set_postfix(post, refresh=False)
            bar.refresh()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dfs bench stress", description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--data", default="", help="the data folder of a running cluster (`dfs cluster up --data`)")
    where.add_argument("--cluster", default="", help="a cluster file")
    where.add_argument("--mgmt", default="", help="mgmt addresses, comma-separated")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds")
    ap.add_argument("--seed", type=int, default=None, help="default: from the clock (printed)")
    ap.add_argument("--chaos", action="store_true", help="kill -9 and restart servers during the run (own cluster)")
    ap.add_argument("--chaos-every", type=float, default=2.0, help="mean seconds between two kills")
    ap.add_argument("--chaos-down", type=float, default=2.0, help="mean seconds a killed process stays down")
    ap.add_argument("--shards", type=int, default=2, help="own cluster: metadata shards")
    ap.add_argument("--replicas", type=int, default=3, help="own cluster: replicas per shard")
    ap.add_argument("--data-servers", type=int, default=3, help="own cluster: data servers")
    ap.add_argument("--dir", default="", help="own cluster: where its temporary folder goes")
    ap.add_argument("--keep", action="store_true", help="own cluster: keep its folder (logs) at the end")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--json", default="")
    ap.add_argument("--linearizable", action="store_true",
                    help="record a history of a few names and check it for linearizability (with --chaos: "
                         "kills and pauses)")
    ap.add_argument("--groups", type=int, default=0, help="--linearizable: groups of names (default clients/2)")
    ap.add_argument("--check-timeout", type=float, default=600.0, help="--linearizable: seconds the check may take")
    ap.add_argument("--history", default="", help="--linearizable: where the history goes when it fails the check")
    a = ap.parse_args(argv)
    if a.chaos and (a.data or a.cluster or a.mgmt):
        ap.error("--chaos kills processes: only with the cluster this tool starts itself")
    if a.clients < 1 or a.duration <= 0:
        ap.error("--clients and --duration must be positive")
    if a.seed is None:
        a.seed = int(time.time() * 1000) % 1_000_000
    print(f"dfs bench stress: {a.clients} clients, {a.duration:g} s, seed {a.seed}"
          + (", linearizable" if a.linearizable else "") + (", chaos" if a.chaos else ""), flush=True)
    if a.linearizable:
        res = linearizable(a)
        print(summary_lin(res), flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=1, default=str)
        return {"linearizable": 0, "not linearizable": 1}.get(res["verdict"], 2)
    res = stress(a)
    print(summary(res), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return 1 if res["differences_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
