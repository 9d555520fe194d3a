"""The shape of the snapshot commands: `dfs snapshot ...` and `dfs mount --snapshot`, without a
cluster (their work is tested in tests/integration/test_snapshot_client.py)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dfs.cli.main import cli
from dfs.client.snapshots import check_snapshot_name, parse_spec


def test_the_commands_and_their_options():
    r = CliRunner().invoke(cli, ["snapshot", "--help"])
    assert r.exit_code == 0
    for sub in ("create", "list", "delete", "diff"):
        assert sub in r.output
    r = CliRunner().invoke(cli, ["mount", "--help"])
    assert "--snapshot" in r.output and "--cache-dir" in r.output and "--snapdir" in r.output


def test_a_bad_snapshot_spec_is_refused_before_anything_else(tmp_path):
    r = CliRunner().invoke(cli, ["mount", str(tmp_path), "--snapshot", "no-at-sign", "--mgmt", "127.0.0.1:1"])
    assert r.exit_code != 0 and "PATH@NAME" in r.output
    r = CliRunner().invoke(cli, ["mount", str(tmp_path), "--snapshot", "/d@a/b", "--mgmt", "127.0.0.1:1"])
    assert r.exit_code != 0 and "bad snapshot name" in r.output


def test_specs_and_names():
    assert parse_spec("/data/set@v1") == ("/data/set", "v1")
    assert parse_spec("/a@b@c") == ("/a@b", "c")  # the last @ separates
    for bad in ("v1", "@v1", "/d@", "/d@.", "/d@..", "/d@a/b"):
        with pytest.raises(OSError):
            parse_spec(bad)
    with pytest.raises(OSError):
        check_snapshot_name("x" * 256)
    assert check_snapshot_name("x" * 255) == "x" * 255
