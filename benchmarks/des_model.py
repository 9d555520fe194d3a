"""A discrete-event model of dfs's metadata service, driven by measured CPU costs (issue 17).

    python benchmarks/des_model.py benchmarks/results/shards-2026-12-07.json \
        [--shards 1,2,4,8,16,32,64] [--clients 10,100,1000] [--plot docs/benchmarks/shards-model.png] \
        [--markdown out.md]

Input: the JSON of ``dfs bench shards`` (CPU seconds per operation of every
process, by operation kind, on 1, 2, 4, 8 shards). Output: throughput and p99
latency predicted for 1 to 64 shards and 10 to 1,000 clients, the validation
against the measured runs, and what stops scaling first.

The model (simpy; every figure below is an input or an assumption, none is fitted to throughput):

* Processes are CPU queues. ``--hardware dedicated`` (the prediction): every
  server process and every client has a core of its own (a Python process
  uses at most one); ``--hardware shared``: all of them share ``--cores``
  cores, as on the measuring machine (the validation).
* An operation is a sequence of CPU bursts and network delays. Its costs come
  from the 1-shard run (where every operation is one-phase): the client's
  CPU, the leader's, each follower's (followers' total / (replicas - 1)), the
  data servers' (on one of them). A logged operation waits for one follower
  (a majority of 3) and a journal sync (``--fsync-ms``); reads do not. Every
  hop costs ``--rtt-ms`` / 2 each way (no bandwidth limit: metadata messages
  are small).
* Two-phase operations: their share at S shards is the measured share at the
  largest measured shard count, scaled as ``(S - 1) / S`` (a random other
  shard); their extra CPU (coordinator and participant, leaders and
  followers) is derived from the same run: ``c2 = c1 + (c(S) - c1) / share``,
  split evenly between the two shards, in two rounds (prepare, commit).
* A directory moving to another parent holds the cluster-wide ordering point
  on shard 0 for its whole two-phase commit (a lock of capacity one; the real
  service is optimistic and retries, which is worse under contention).
* Data servers: as many as shards (at least 3) unless ``--data-servers``; a
  small file's data CPU goes to one of them (the chain's copies included).
* Directories, hence operations, are spread uniformly over the shards;
  ``--hot F`` sends a fraction F of them to one directory (shard 1).
* Clients are closed loops, one operation outstanding each, no think time.
  Strict-mode clients revalidate the root's attributes and ``--depth`` names
  in the root once per ``--ttl`` seconds: lookups on shard 0 at the stat cost.
* Per-operation CPU is taken as constant: the measured costs include the
  batching of group commit at 16 operations in flight; with many clients per
  shard it batches more (cheaper), with few less. Idle costs (Raft heartbeats,
  map polls) are not in the operations' costs; mgmt's grows with the number
  of processes polling it and is extrapolated separately.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import dataclass

import simpy

KINDS = ("create", "stat", "readdir", "rename (same dir)", "rename (cross dir)", "unlink 4096 B",
         "write 4096 B", "read 4096 B", "mkdir", "rmdir", "rename dir (cross dir)")
READS = {"stat", "readdir", "read 4096 B"}
MIX = ("create", "stat", "stat", "readdir", "rename (same dir)", "unlink 4096 B", "write 4096 B",
       "read 4096 B", "read 4096 B")  # an mdtest/shuffle-like mix, reads twice


# ---------------------------------------------------------------------- costs from the measurement

@dataclass
class Cost:
    """CPU seconds of one operation of a kind, by role (one-phase), and its two-phase extra."""

    client: float
    leader: float
    follower: float  # per follower
    data: float
    share_at: tuple[int, float]  # (shards, measured share of two-phase) used for the extrapolation
    leader2: float  # total leader CPU of a two-phase one (both shards)
    follower2: float  # per follower, both shards' followers together
    logged: bool

    def share(self, shards: int) -> float:
        s0, p0 = self.share_at
        if shards <= 1 or s0 <= 1 or p0 <= 0:
            return 0.0
        return min(1.0, p0 * ((shards - 1) / shards) / ((s0 - 1) / s0))


def per_op(row: dict, role: str) -> float:
    return max(0.0, row["cpu_net"][role]) / max(1, row["ops"])


def load_costs(res: list[dict], replicas: int) -> dict[str, Cost]:
    """Costs by kind: one-phase from the 1-shard run, two-phase from the largest run with a share."""
    by = {r["shards"]: {p["phase"]: p for p in r["phases"]} for r in res}
    one = by[min(by)]
    out = {}
    for kind in KINDS:
        r1 = one.get(kind)
        if r1 is None:
            continue
        nf = max(1, replicas - 1)
        c = Cost(per_op(r1, "client"), per_op(r1, "leaders"), per_op(r1, "followers") / nf, per_op(r1, "data"),
                 (1, 0.0), per_op(r1, "leaders"), per_op(r1, "followers") / nf, kind not in READS)
        for s in sorted(by, reverse=True):
            rs = by[s].get(kind)
            if rs is None or not rs["ops"]:
                continue
            share = rs["two_phase"] / rs["ops"]
            if share > 0.05:
                c.share_at = (s, share)
                c.leader2 = c.leader + max(0.0, per_op(rs, "leaders") - c.leader) / share
                c.follower2 = c.follower + max(0.0, per_op(rs, "followers") / nf - c.follower) / share
                break
        out[kind] = c
    return out


# ---------------------------------------------------------------------- the simulation

@dataclass
class Params:
    shards: int
    clients: int
    kinds: tuple[str, ...]
    replicas: int = 3
    data_servers: int = 3
    hardware: str = "dedicated"  # or "shared"
    cores: float = 2.0
    rtt: float = 0.0002
    fsync: float = 0.0005
    hot: float = 0.0
    ttl: float = 1.0
    depth: int = 1
    inflight: int = 1  # operations outstanding per client
    ops: int = 20000  # completed operations to simulate (after warm-up)
    seed: int = 17


class Sim:
    def __init__(self, costs: dict[str, Cost], p: Params) -> None:
        self.c, self.p = costs, p
        self.env = simpy.Environment()
        self.rnd = random.Random(p.seed)
        env = self.env
        if p.hardware == "shared":
            pool = simpy.Resource(env, capacity=max(1, round(p.cores)))
            self.scale = max(1, round(p.cores)) / p.cores  # fractional cores: slower bursts
            one = lambda: pool  # noqa: E731 - every process draws on the same cores
        else:
            self.scale = 1.0
            one = lambda: simpy.Resource(env, capacity=1)  # noqa: E731
        self.leader = [one() for _ in range(p.shards)]
        self.followers = [[one() for _ in range(p.replicas - 1)] for _ in range(p.shards)]
        self.data = [one() for _ in range(p.data_servers)]
        self.client = [one() for _ in range(p.clients)]
        self.order = simpy.Resource(env, capacity=1)  # the directory-rename ordering point (shard 0)
        self.lat: list[float] = []
        self.done = 0
        self.start = None

    def burst(self, res: simpy.Resource, secs: float):
        if secs <= 0:
            return
        with res.request() as rq:
            yield rq
            yield self.env.timeout(secs * self.scale)

    def replicate(self, shard: int, secs: float):
        """One Raft round: followers' CPU in parallel, the first answer (a majority of 3) and a sync."""
        env = self.env
        yield env.timeout(self.p.rtt / 2)
        acks = [env.process(self.burst(f, secs)) for f in self.followers[shard]]
        if acks:
            yield env.any_of(acks)
        yield env.timeout(self.p.fsync + self.p.rtt / 2)

    def pick_shard(self) -> int:
        if self.p.hot > 0 and self.rnd.random() < self.p.hot:
            return min(1, self.p.shards - 1)
        return self.rnd.randrange(self.p.shards)

    def operation(self, cl: int, kind: str):
        env, c, p = self.env, self.c[kind], self.p
        t0 = env.now
        yield from self.burst(self.client[cl], c.client)
        yield env.timeout(p.rtt / 2)
        s = self.pick_shard()
        two = self.rnd.random() < c.share(p.shards)
        held = None
        if kind == "rename dir (cross dir)":  # the ordering point, for the whole commit
            held = self.order.request()
            yield held
        if not two:
            yield from self.burst(self.leader[s], c.leader)
            if c.logged:
                yield from self.replicate(s, c.follower)
        else:
            o = (s + 1 + self.rnd.randrange(p.shards - 1)) % p.shards
            lead, foll = c.leader2 / 4, c.follower2 / 4  # 2 shards x 2 rounds
            for _round in range(2):  # prepare, commit: here, then at the participant
                yield from self.burst(self.leader[s], lead)
                yield from self.replicate(s, foll)
                yield env.timeout(p.rtt)
                yield from self.burst(self.leader[o], lead)
                yield from self.replicate(o, foll)
        if held is not None:
            self.order.release(held)
        if c.data > 0:
            yield env.timeout(p.rtt)
            yield from self.burst(self.data[self.rnd.randrange(p.data_servers)], c.data)
        yield env.timeout(p.rtt / 2)
        if self.start is not None:
            self.lat.append(env.now - t0)
            self.done += 1

    def client_loop(self, cl: int):
        kinds = self.p.kinds
        while True:
            yield from self.operation(cl, kinds[self.rnd.randrange(len(kinds))])

    def revalidate(self, cl: int):
        """A strict client's path walks: the root and ``depth`` names again once per ttl (shard 0)."""
        env, p = self.env, self.p
        stat = self.c["stat"]
        yield env.timeout(self.rnd.random() * p.ttl)
        while True:
            for _ in range(1 + p.depth):
                yield from self.burst(self.leader[0], stat.leader)
            yield env.timeout(p.ttl)

    def run(self) -> dict:
        env, p = self.env, self.p
        for cl in range(p.clients):
            for _ in range(p.inflight):
                env.process(self.client_loop(cl))
            if p.ttl > 0 and "stat" in self.c:
                env.process(self.revalidate(cl))
        warm = 0.05
        env.run(until=warm)
        self.start = env.now
        step = 0.05
        # Where the root's revalidations load shard 0's leader near or past its core, its queue
        # builds up over several TTLs: simulate two of them at least, or the overload is missed.
        st = self.c.get("stat")
        rho0 = p.clients * (1 + p.depth) * st.leader / p.ttl if (st and p.ttl > 0) else 0.0
        least = 2 * p.ttl if rho0 >= 0.8 else 0.0
        while (self.done < p.ops or env.now - self.start < least) and env.now - self.start < 30.0:
            env.run(until=env.now + step)
        secs = env.now - self.start
        lat = sorted(self.lat)
        q = lambda f: lat[min(len(lat) - 1, math.ceil(f * len(lat)) - 1)] if lat else float("nan")  # noqa: E731
        return {"shards": p.shards, "clients": p.clients, "ops_per_s": self.done / secs if secs else 0.0,
                "p50_ms": q(0.5) * 1e3, "p99_ms": q(0.99) * 1e3}


def simulate(costs: dict[str, Cost], **kw) -> dict:
    return Sim(costs, Params(**kw)).run()


# ---------------------------------------------------------------------- checks against the measurement

def validate(res: list[dict], costs: dict[str, Cost], replicas: int) -> list[dict]:
    """For each measured run: (a) CPU per operation over all processes, measured and predicted
    from the 1-shard costs and the two-phase model; (b) throughput and p50 of the shared-core
    simulation (one client, as many in flight as measured, the cores the run actually got:
    its processes' CPU seconds per second of the phase) against the run's."""
    out = []
    for r in res:
        s = r["shards"]
        for ph in r["phases"]:
            kind = ph["phase"]
            c = costs.get(kind)
            if c is None or not ph["ops"]:
                continue
            share = c.share(s)
            nf = replicas - 1
            one = c.client + c.leader + nf * c.follower + c.data
            two = c.client + c.leader2 + nf * c.follower2 + c.data
            pred = (1 - share) * one + share * two
            meas = sum(max(0.0, ph["cpu_net"][k]) for k in ("client", "leaders", "followers", "mgmt", "data")) \
                / ph["ops"]
            got = sum(ph["cpu_raw"][k] for k in ("client", "leaders", "followers", "mgmt", "data")) / ph["seconds"]
            # as measured: 16 in flight, directory renames one at a time (dfs bench shards)
            inflight = 1 if kind == "rename dir (cross dir)" else 16
            sim = simulate(costs, shards=s, clients=1, inflight=inflight, kinds=(kind,), hardware="shared",
                           cores=max(0.2, got), ttl=0, ops=min(ph["ops"], 3000), replicas=replicas,
                           fsync=0.002, rtt=0.0002)
            out.append({"kind": kind, "shards": s, "cpu_ms": meas * 1e3, "cpu_ms_pred": pred * 1e3,
                        "share": ph["two_phase"] / ph["ops"], "share_pred": share, "cores_got": got,
                        "ops_per_s": ph["ops_per_s"], "ops_per_s_pred": sim["ops_per_s"],
                        "p50_ms": ph["p50_ms"], "p50_ms_pred": sim["p50_ms"]})
    return out


def mgmt_fit(res: list[dict]) -> tuple[float, float]:
    """mgmt's idle CPU (s/s) as a + b * shards, least squares over the measured runs."""
    xs = [r["shards"] for r in res]
    ys = [r["idle_cpu_per_s"]["mgmt"] for r in res]
    if len(xs) < 2:
        return ys[0] if ys else 0.0, 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(1e-12, sum((x - mx) ** 2 for x in xs))
    return my - b * mx, b


# ---------------------------------------------------------------------- output

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("measurement", help="the JSON of `dfs bench shards`")
    ap.add_argument("--shards", default="1,2,4,8,16,32,64")
    ap.add_argument("--clients", default="10,100,1000")
    ap.add_argument("--workloads", default="create,stat,mix")
    ap.add_argument("--rtt-ms", type=float, default=0.2, help="network round trip (datacenter LAN)")
    ap.add_argument("--fsync-ms", type=float, default=0.5, help="a Raft journal sync (NVMe)")
    ap.add_argument("--ttl", type=float, default=1.0, help="clients' cache TTL (root revalidation)")
    ap.add_argument("--data-servers", type=int, default=0,
                    help="data servers of the predicted clusters (0: as many as shards, at least 3)")
    ap.add_argument("--ops", type=int, default=5000, help="operations simulated per point (after warm-up)")
    ap.add_argument("--plot", default=None, help="PNG of the curves")
    ap.add_argument("--markdown", default=None, help="write the tables here")
    ap.add_argument("--no-validate", action="store_true")
    a = ap.parse_args(argv)
    with open(a.measurement) as f:
        doc = json.load(f)
    res = doc["results"]
    replicas = res[0]["replicas"]
    costs = load_costs(res, replicas)
    md: list[str] = []

    def out(s: str = "") -> None:
        print(s)
        md.append(s)

    out("### Costs the model uses (CPU ms per operation, from the 1-shard run; two-phase from the largest)")
    out()
    out("| kind | client | leader | per follower | data | two-phase share measured (at S) | 2PC leaders | "
        "2PC per follower |")
    out("|---|---|---|---|---|---|---|---|")
    for k, c in costs.items():
        out(f"| {k} | {c.client * 1e3:.2f} | {c.leader * 1e3:.2f} | {c.follower * 1e3:.2f} | {c.data * 1e3:.2f} | "
            f"{100 * c.share_at[1]:.0f}% ({c.share_at[0]}) | {c.leader2 * 1e3:.2f} | {c.follower2 * 1e3:.2f} |")
    if not a.no_validate:
        out()
        out("### Validation against the measured runs (this machine, shared cores)")
        out()
        out("| kind | shards | CPU ms/op measured | predicted | 2PC share measured | predicted | cores the run got "
            "| ops/s measured | simulated | p50 ms measured | simulated |")
        out("|---|---|---|---|---|---|---|---|---|---|---|")
        for v in validate(res, costs, replicas):
            out(f"| {v['kind']} | {v['shards']} | {v['cpu_ms']:.2f} | {v['cpu_ms_pred']:.2f} | "
                f"{100 * v['share']:.0f}% | {100 * v['share_pred']:.0f}% | {v['cores_got']:.2f} | "
                f"{v['ops_per_s']:.0f} | {v['ops_per_s_pred']:.0f} | {v['p50_ms']:.1f} | {v['p50_ms_pred']:.1f} |")
    shards = [int(x) for x in a.shards.split(",")]
    clients = [int(x) for x in a.clients.split(",")]
    workloads = a.workloads.split(",")
    curves: dict[tuple[str, int], list[dict]] = {}
    out()
    out(f"### Predicted: dedicated cores (a core per server process and per client), rtt {a.rtt_ms} ms, "
        f"journal sync {a.fsync_ms} ms, client TTL {a.ttl} s, "
        + (f"{a.data_servers} data servers" if a.data_servers else "as many data servers as shards (at least 3)"))
    out()
    out("| workload | clients | " + " | ".join(f"{s} shards" for s in shards) + " |")
    out("|---|---|" + "---|" * len(shards))
    for w in workloads:
        kinds = MIX if w == "mix" else (w,)
        for n in clients:
            pts = [simulate(costs, shards=s, clients=n, kinds=kinds, rtt=a.rtt_ms / 1e3, fsync=a.fsync_ms / 1e3,
                            ttl=a.ttl, ops=a.ops, replicas=replicas, data_servers=a.data_servers or max(3, s))
                   for s in shards]
            curves[(w, n)] = pts
            out(f"| {w} | {n} | " + " | ".join(f"{p['ops_per_s']:,.0f}/s, p99 {p['p99_ms']:.1f} ms" for p in pts) + " |")
            sys.stdout.flush()
    # what stops scaling first
    out()
    out("### Limits")
    out()
    a0, b0 = mgmt_fit(res)
    for s in (64, 256):
        out(f"- mgmt, idle (map polls of {3 * s} replicas, heartbeats): {a0 + b0 * s:.3f} CPU s/s at {s} shards "
            f"(fit {a0:.4f} + {b0:.5f} x shards)")
    st = costs.get("stat")
    if st:
        per_client = 2 / a.ttl * st.leader
        out(f"- the root on shard 0: each strict client revalidates the root and a top-level name every "
            f"{a.ttl:g} s: {per_client * 1e3:.2f} ms of shard 0's leader per client-second; one core is "
            f"saturated by {1 / per_client:,.0f} clients")
    rd = costs.get("rename dir (cross dir)")
    if rd:
        hold = 2 * (2 * a.rtt_ms / 1e3 + 2 * (a.fsync_ms / 1e3 + a.rtt_ms / 1e3)) + rd.leader2 / 2
        out(f"- directory renames to another parent: one at a time cluster-wide (the ordering point), about "
            f"{hold * 1e3:.1f} ms each: at most {1 / hold:,.0f}/s whatever the shard count")
    cr = costs.get("create")
    if cr:
        out(f"- a hot directory (one shard): creates at most {1 / cr.leader:,.0f}/s "
            f"(its leader's {cr.leader * 1e3:.2f} ms each), whatever the shard count")
    if a.plot:
        plot(curves, shards, clients, workloads, a.plot)
        out()
        out(f"Chart: {a.plot}")
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write("\n".join(md) + "\n")
    return 0


def plot(curves, shards, clients, workloads, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(workloads), figsize=(5 * len(workloads), 7), squeeze=False)
    for j, w in enumerate(workloads):
        for n in clients:
            pts = curves[(w, n)]
            axes[0][j].plot(shards, [p["ops_per_s"] for p in pts], marker="o", label=f"{n} clients")
            axes[1][j].plot(shards, [p["p99_ms"] for p in pts], marker="o", label=f"{n} clients")
        axes[0][j].set_title(f"{w}: throughput (model)")
        axes[1][j].set_title(f"{w}: p99 latency (model)")
        for i in (0, 1):
            axes[i][j].set_xscale("log", base=2)
            axes[i][j].set_yscale("log")
            axes[i][j].set_xlabel("metadata shards")
            axes[i][j].grid(True, which="both", alpha=0.3)
        axes[0][j].set_ylabel("operations/s")
        axes[1][j].set_ylabel("ms")
        axes[0][j].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
