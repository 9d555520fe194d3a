"""Summarise a py-spy collapsed-stack profile (``py-spy record --format raw --threads``).

    .venv/bin/python benchmarks/profile_summary.py /tmp/leader.txt [--top 25] [--inclusive PATTERN ...]

Prints the share of samples per thread, the top functions by self time
(leaf frame), and for each ``--inclusive`` pattern the share of samples whose
stack contains a frame matching it (e.g. ``_apply_entry``, ``Execute``).
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--inclusive", nargs="*", default=[])
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
    if a.inclusive:
        print("\ninclusive:")
        for pat in a.inclusive:
            rx = re.compile(pat)
            n = sum(c for st, c in rows if any(rx.search(fr) for fr in st[1:]))
            print(f"  {100 * n / total:5.1f}%  {pat}")


if __name__ == "__main__":
    main()
