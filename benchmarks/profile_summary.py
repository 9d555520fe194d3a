"""Summarise a py-spy collapsed-stack profile (``py-spy record --format raw --threads``).

    .venv/bin/python benchmarks/profile_summary.py /tmp/leader.txt [--top 25] [--inclusive PATTERN ...]
        [--by-process]

Prints the share of samples per thread, the top functions by self time
(leaf frame), and for each ``--inclusive`` pattern the share of samples whose
stack contains a frame matching it (e.g. ``_apply_entry``, ``Execute``).
``--by-process`` (a profile of a process tree, ``py-spy record --subprocesses``)
prints the samples per process, named by role (meta replica, data server, mgmt,
mount, reader), and the top self-time functions of each role.
"""

from __future__ import annotations

import argparse
import collections
import re


def load(path: str) -> list[tuple[list[str], int]]:
    out = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, n = line.rpartition(" ")
            out.append((stack.split(";"), int(n)))
    return out


ROLES = (("dfs.meta.server", "meta replica"), ("dfs.data.server", "data server"),
         ("dfs.mgmt.server", "mgmt"), ("dfs.cli mount", "mount"), (" mount ", "mount"),
         ("multiprocessing", "reader"), ("reader", "reader"))


def role_of(frame: str) -> str:
    for key, role in ROLES:
        if key in frame:
            return role
    return "other"


def by_process(rows: list[tuple[list[str], int]], total: int, top: int) -> None:
    procs: collections.Counter = collections.Counter()
    roles: collections.Counter = collections.Counter()
    leaf: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for st, n in rows:
        if not st[0].startswith("process "):
            continue
        pid = st[0].split(":", 1)[0]
        role = role_of(st[0])
        procs[(role, pid)] += n
        roles[role] += n
        leaf[role][re.sub(r"\s+", " ", st[-1])] += n
    print("\nby role:")
    for r, n in roles.most_common():
        print(f"  {100 * n / total:5.1f}%  {r}")
    print("\nby process:")
    for (r, pid), n in procs.most_common():
        print(f"  {100 * n / total:5.1f}%  {r} ({pid})")
    for r, _ in roles.most_common():
        print(f"\n{r}: self time (leaf frame), share of all samples")
        for f, n in leaf[r].most_common(top):
            print(f"  {100 * n / total:5.1f}%  {f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--inclusive", nargs="*", default=[])
    ap.add_argument("--by-process", action="store_true")
    a = ap.parse_args()
    rows = load(a.path)
    total = sum(n for _, n in rows) or 1
    threads: collections.Counter = collections.Counter()
    leaf: collections.Counter = collections.Counter()
    for st, n in rows:
        threads[st[0]] += n
        leaf[re.sub(r"\s+", " ", st[-1])] += n
    print(f"{total} samples")
    print("\nby thread:")
    for t, n in threads.most_common():
        print(f"  {100 * n / total:5.1f}%  {t}")
    print("\nself time (leaf frame):")
    for f, n in leaf.most_common(a.top):
        print(f"  {100 * n / total:5.1f}%  {f}")
    if a.by_process:
        by_process(rows, total, a.top)
        return
    if a.inclusive:
        print("\ninclusive:")
        for pat in a.inclusive:
            rx = re.compile(pat)
            n = sum(c for st, c in rows if any(rx.search(fr) for fr in st[1:]))
            print(f"  {100 * n / total:5.1f}%  {pat}")


if __name__ == "__main__":
    main()
