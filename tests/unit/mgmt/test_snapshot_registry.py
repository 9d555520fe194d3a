"""The snapshot registry in the cluster map: numbers, states, the data epoch, repeats, refusals, usage."""

from __future__ import annotations

import errno

import msgpack

from dfs.mgmt.server import map_to_pb
from dfs.mgmt.store import CREATING_TIMEOUT, MgmtStore, live_snapshots
from dfs.common.clustermap import ClusterMap

from .stores import Mgmt, cfg

T0 = 1_000_000_000_000


def begin(mg: Mgmt, name: str, root: int = 1, ts: int = T0, path: str = "/d"):
    return mg.do("snap_begin", name, root, path, ts)


def test_a_snapshot_from_begin_to_forget():
    mg = Mgmt(cfg(3, 1))
    assert mg.map["data_epoch"] == 1 and mg.map["snapshots"] == {}
    e0 = mg.map["epoch"]
    assert begin(mg, "s1") == [0, e0 + 1, 1]  # S = the data epoch
    assert mg.map["snapshots"][1] == {"name": "s1", "root": 1, "path": "/d", "state": "creating", "created": T0}
    assert mg.map["data_epoch"] == 1 and live_snapshots(mg.map) == []  # not live until ready
    assert mg.do("snap_ready", 1) == [0, e0 + 2, 2, [1]]
    assert mg.map["data_epoch"] == 2 and live_snapshots(mg.map) == [1]
    assert begin(mg, "s2", ts=T0 + 1) == [0, e0 + 3, 2]
    assert mg.do("snap_ready", 2)[2:] == [3, [1, 2]]
    assert mg.do("snap_delete", 1)[0] == 0
    assert mg.map["snapshots"][1]["state"] == "deleting" and live_snapshots(mg.map) == [2]
    assert mg.map["data_epoch"] == 3  # deleting never moves the epoch
    assert mg.do("snap_forget", 1)[0] == 0
    assert 1 not in mg.map["snapshots"]
    cm = ClusterMap.from_pb(map_to_pb(mg.map))
    assert cm.data_epoch == 3 and cm.live_snapshots == (2,)
    assert cm.snapshots[2].name == "s2" and cm.snapshots[2].state == "ready" and cm.snapshots[2].root == 1


def test_every_command_is_a_no_op_when_repeated():
    mg = Mgmt(cfg(3, 1))
    s = begin(mg, "a")[2]
    m = mg.map
    assert begin(mg, "a") == [0, m["epoch"], s]  # the same command: the same number, nothing changes
    assert mg.map == m
    r = mg.do("snap_ready", s)
    m = mg.map
    assert mg.do("snap_ready", s) == r and mg.map == m
    mg.do("snap_delete", s)
    m = mg.map
    assert mg.do("snap_delete", s)[0] == 0 and mg.map == m
    mg.do("snap_forget", s)
    m = mg.map
    assert mg.do("snap_forget", s)[0] == 0 and mg.map == m
    assert mg.do("snap_abort", s)[:3] == [0, m["epoch"], "gone"] and mg.map == m
    assert mg.do("snap_delete", s)[0] == 0 and mg.map == m


def test_an_aborted_number_is_never_given_again():
    mg = Mgmt(cfg(3, 1))
    assert begin(mg, "a")[2] == 1
    assert mg.do("snap_abort", 1)[2:] == ["gone", 1, []]
    assert 1 not in mg.map["snapshots"] and mg.map["data_epoch"] == 1
    assert begin(mg, "a", ts=T0 + 5)[2] == 2  # the name is free again; the number is not
    assert mg.do("snap_ready", 2)[2:] == [3, [2]]
    assert begin(mg, "b", ts=T0 + 6)[2] == 3


def test_abort_of_a_ready_snapshot_tells_its_state():
    mg = Mgmt(cfg(3, 1))
    s = begin(mg, "a")[2]
    mg.do("snap_ready", s)
    m = mg.map
    assert mg.do("snap_abort", s) == [0, m["epoch"], "ready", 2, [1]]
    assert mg.map == m


def test_refusals_change_nothing():
    mg = Mgmt(cfg(3, 1))
    begin(mg, "taken", root=7)
    mg.do("snap_ready", 1)
    m = mg.map
    for bad in ("", "a/b", "a\0b", ".", "..", "x" * 256, "é" * 128):
        assert mg.do("snap_begin", bad, 1, "/d", T0)[0] == errno.EINVAL, bad
    assert mg.do("snap_begin", "ok", -1, "/d", T0)[0] == errno.EINVAL
    assert mg.do("snap_begin", "ok", 1, 5, T0)[0] == errno.EINVAL
    assert begin(mg, "taken", root=7, ts=T0 + 1)[0] == errno.EEXIST
    assert mg.do("snap_ready", 99)[0] == errno.ENOENT
    assert mg.do("snap_forget", 1)[0] == errno.EINVAL  # ready: delete it first
    assert mg.do("snap_usage", 99, {})[0] == errno.EINVAL
    assert mg.do("snap_usage", 1, {1: [1]})[0] == errno.EINVAL
    assert mg.map == m
    assert begin(mg, "taken", root=8)[0] == 0  # the same name under another root
    assert begin(mg, "x" * 255, root=9)[0] == errno.EBUSY  # one creation at a time
    assert mg.do("snap_delete", 2)[0] == errno.EINVAL  # creating: abort it
    mg.do("snap_ready", 2)
    mg.do("snap_delete", 2)
    assert mg.do("snap_ready", 2)[0] == errno.EINVAL  # deleting


def test_a_creation_whose_coordinator_is_gone_gives_way():
    mg = Mgmt(cfg(3, 1))
    assert begin(mg, "stuck")[2] == 1
    assert begin(mg, "next", ts=T0 + CREATING_TIMEOUT)[0] == errno.EBUSY
    assert begin(mg, "next", ts=T0 + CREATING_TIMEOUT + 1)[2] == 2
    assert list(mg.map["snapshots"]) == [2]
    assert mg.do("snap_ready", 1)[0] == errno.ENOENT  # the lost coordinator cannot finish


def test_usage_is_summed_per_snapshot_and_does_not_bump_the_epoch():
    mg = Mgmt(cfg(3, 1))
    for name, ts in (("a", T0), ("b", T0 + 1)):
        s = begin(mg, name, ts=ts)[2]
        mg.do("snap_ready", s)
    e = mg.map["epoch"]
    assert mg.do("snap_usage", 1, {1: [100, 10], 2: [5, 10]}) == [0, e]
    assert mg.do("snap_usage", 2, {1: [100, 10]}) == [0, e]
    cm = ClusterMap.from_pb(map_to_pb(mg.map))
    assert (cm.snapshots[1].exclusive, cm.snapshots[1].shared) == (200, 20)
    assert (cm.snapshots[2].exclusive, cm.snapshots[2].shared) == (5, 10)
    mg.do("snap_delete", 1)
    mg.do("snap_forget", 1)
    assert mg.map["snap_usage"] == {1: {2: [5, 10]}}
    assert mg.do("snap_usage", 1, {})[0] == 0 and mg.map["snap_usage"] == {}


def test_set_keeps_the_registry_and_the_epoch():
    mg = Mgmt(cfg(3, 1))
    begin(mg, "a")
    mg.do("snap_ready", 1)
    m = mg.map
    mg.do("set", {k: m[k] for k in ("cluster_id", "mgmt", "shards")})
    assert mg.map["snapshots"] == m["snapshots"] and mg.map["data_epoch"] == 2 and mg.map["snap_next"] == 2


def test_registry_commands_are_deterministic(tmp_path):
    a = Mgmt(cfg(3, 1))
    begin(a, "a")
    a.do("snap_ready", 1)
    begin(a, "b", ts=T0 + 1)
    a.do("snap_abort", 2)
    a.do("snap_usage", 1, {1: [3, 4]})
    a.do("snap_delete", 1)
    b = MgmtStore(str(tmp_path / "b"))
    b.apply(1, a.log[:2])
    b.apply(2, a.log[2:])
    assert msgpack.packb(b.cluster_map()) == msgpack.packb(a.map)
    b.kv.close()


def test_maps_from_before_snapshots_read_as_epoch_one():
    mg = Mgmt(cfg(3, 1))
    pbm = map_to_pb(mg.map)
    pbm.ClearField("data_epoch")
    assert ClusterMap.from_pb(pbm).data_epoch == 1
