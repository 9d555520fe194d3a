"""Nothing stops silently (issue 15): every server's background loops and the client's
renewers run under one ``Supervisor`` per process (dfs/common/tasks.py). With
``DFS_FAULT_TASKS`` naming them, each task's first run raises; the test sees the failure
logged by name, the task running again (the cluster works: heartbeats, failure detection,
the map follower, renewals), the failures counted in the metrics, and a task the process
cannot live without (the data server's accept loop) ending the process with EX_SOFTWARE
and a CRITICAL line, so that its supervisor (systemd, Kubernetes) restarts it.
"""

from __future__ import annotations

import pytest

import dfs
from dfs.common.tasks import EX_SOFTWARE, FAULT_ENV
from dfs.testing.metrics import get, scrape
from dfs.testing.wait import until

pytestmark = pytest.mark.integration

SERVER_TASKS = {
    "mgmt": ["failure-detection"],
    "meta": ["map-follower", "recovery", "orphan-sweep", "read-handle-expiry", "delegation-expiry",
             "snapshot-pruning"],
    "data": ["heartbeats", "snapshot-usage"],
}
CLIENT_TASKS = ["handle-renewal", "handle-close"]


def _log(p) -> str:
    with open(p.log, errors="replace") as f:
        return f.read()


def _restarted(p, task: str) -> bool:
    text = _log(p)
    return (f"task {task} failed (run 1): injected fault" in text
            and f"task {task} restarting" in text)


def test_injected_faults_are_logged_counted_and_restarted(make_cluster, monkeypatch):
    names = sorted({t for ts in SERVER_TASKS.values() for t in ts} | set(CLIENT_TASKS))
    monkeypatch.setenv(FAULT_ENV, ",".join(names))
    c = make_cluster(shards=1, replicas=1, mgmt_replicas=1, data_servers=3, metrics=True)
    for p in c.procs:
        for task in SERVER_TASKS[p.role]:
            until(lambda: _restarted(p, task), 30, f"{p.name}: task {task} failed, logged and restarted")
    for p in c.procs:
        m = scrape(p)
        for task in SERVER_TASKS[p.role]:
            assert get(m, "dfs_task_failures_total", task=task) == 1, (p.name, task)

    # the client's renewer and close batcher: failed once each, and the client still works
    fs = dfs.connect(c.config_path)
    try:
        with fs.open("/f", "wb") as f:
            f.write(b"x" * 100)
        with fs.open("/f", "rb") as f:
            assert f.read() == b"x" * 100
        fs.sync()
        tasks = fs.aio.core.tasks
        until(lambda: tasks.failures["handle-close"] == 1, 30, "the close batcher failed once")
        assert tasks.failures["handle-renewal"] == 1
        with fs.open("/f", "rb") as f:  # both ran again after their failure
            assert f.read() == b"x" * 100
        fs.sync()
    finally:
        fs.close()


def test_a_fatal_task_ends_the_process_with_its_reason(make_cluster, monkeypatch):
    c = make_cluster(shards=1, replicas=1, mgmt_replicas=1, data_servers=3)
    victim = c.data_procs()[0]
    monkeypatch.setenv(FAULT_ENV, "accept")
    c.restart(victim)
    until(lambda: victim.popen.poll() is not None, 30, "the data server exits without its accept loop")
    assert victim.popen.returncode == EX_SOFTWARE
    assert "task accept failed and the process cannot go on without it: exiting" in _log(victim)
    monkeypatch.delenv(FAULT_ENV)
    c.spawn(victim)
    c.wait_healthy(60)
