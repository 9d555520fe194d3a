"""Reading a test cluster process's Prometheus endpoint (docs/design/operations.md)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(p) -> dict[str, dict[tuple, float]]:
    """sample name -> {sorted label items: value} of one process (a ``Proc`` with ``metrics``)."""
    text = urllib.request.urlopen(f"http://{p.metrics}/metrics", timeout=5).read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def get(m: dict, name: str, **labels) -> float:
    """One sample of a scrape (0 when absent)."""
    return m.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def total(ms: list[dict], name: str, **labels) -> float:
    """The sum over scrapes and over every label set that includes ``labels``."""
    want = set(labels.items())
    return sum(v for m in ms for k, v in m.get(name, {}).items() if want <= set(k))
