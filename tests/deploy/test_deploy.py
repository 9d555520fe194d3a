"""The multi-machine deployment in cluster/: systemd units, the ssh bootstrap,
the Kubernetes manifests and the image recipe, checked against the cluster
file they are made from. Nothing here leaves this machine: ssh is replaced by
a recorder, systemd only verifies, kubectl only parses."""

from __future__ import annotations

import atexit
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib

import pytest
import tomli_w
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from cluster import bootstrap, plan, render_k8s
from dfs.cli.main import cli
from dfs.common.config import ClusterConfig, example_secrets
from dfs.testing.keys import raft_password, raft_salt

EXAMPLE_SRC = os.path.join(REPO, "cluster", "example-cluster.toml")  # placeholders: refused by every tool
UNITS = os.path.join(REPO, "cluster", "systemd")
K8S_EXAMPLE = os.path.join(REPO, "cluster", "k8s", "example.yaml")  # EXAMPLE_SRC rendered with --example
TEST_PASSWORD, TEST_SALT = raft_password(), raft_salt()  # what an operator puts in


def _example_copy() -> str:
    """The example cluster file as an operator makes it usable: its Raft password and salt
    replaced (its lines, comments and the rest kept)."""
    with open(EXAMPLE_SRC) as f:
        text = f.read()
    for key, value in (("raft_password", TEST_PASSWORD), ("raft_salt", TEST_SALT)):
        text, n = re.subn(rf'^{key} = "replace-me[^"]*"$', f'{key} = "{value}"', text, flags=re.M)
        assert n == 1, key
    d = tempfile.mkdtemp(prefix="dfs-deploy-example-")
    atexit.register(shutil.rmtree, d, True)
    path = os.path.join(d, "example-cluster.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


EXAMPLE = _example_copy()


def _read(path: str, mode: str = "r"):
    with open(path, mode) as f:
        return f.read()


@pytest.fixture(scope="module")
def cfg() -> ClusterConfig:
    return ClusterConfig.load(EXAMPLE)


def _write_cluster(tmp_path, mutate) -> str:
    with open(EXAMPLE, "rb") as f:
        d = tomllib.load(f)
    mutate(d)
    p = tmp_path / "cluster.toml"
    ClusterConfig.from_dict(d).save(str(p))
    return str(p)


# --- the example cluster file --------------------------------------------------

def test_example_is_three_hosts(cfg):
    rs = plan.roles(cfg)
    assert plan.hosts(rs) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert len(cfg.mgmt) == 3 and cfg.nshards == 2 and all(len(s.replicas) == 3 for s in cfg.shards)
    assert len(cfg.data) == 3
    for h in plan.hosts(rs):  # every machine plays every role once
        mine = [r for r in rs if r.host == h]
        assert sorted(r.kind for r in mine) == ["data", "meta", "meta", "mgmt"]


def test_plan_refuses_one_port_for_two_listeners(tmp_path):
    def clash(d):
        d["shards"][1]["replicas"][0]["raft"] = d["mgmt"][0]["raft"]

    with pytest.raises(ValueError, match="10.0.1.1:7100"):
        plan.roles(ClusterConfig.load(_write_cluster(tmp_path, clash)))


# --- systemd units ----------------------------------------------------------------

INSTANCES = {"dfs-mgmt@.service": "2", "dfs-meta@.service": "1-2", "dfs-data@.service": "0",
             "dfs-mount@.service": bootstrap.escape_path("/mnt/dfs")}


def _install_units(dest, prefix: str) -> None:
    os.makedirs(dest, exist_ok=True)
    for u in bootstrap.UNIT_FILES:
        with open(os.path.join(UNITS, u)) as f:
            text = bootstrap.render_unit(f.read(), prefix)
        with open(os.path.join(dest, u), "w") as f:
            f.write(text)


def test_unit_files_are_the_ones_bootstrap_installs():
    assert sorted(os.listdir(UNITS)) == sorted(bootstrap.UNIT_FILES)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_verify(tmp_path):
    # verify wants ExecStart's binary to exist: install the units under a
    # prefix whose .venv/bin/dfs is this environment's real one, as
    # bootstrap --prefix does
    real = os.path.join(os.path.dirname(sys.executable), "dfs")
    assert os.access(real, os.X_OK)
    prefix = tmp_path / "prefix"
    (prefix / ".venv" / "bin").mkdir(parents=True)
    (prefix / ".venv" / "bin" / "dfs").symlink_to(real)
    _install_units(tmp_path, str(prefix))
    names = ["dfs.target"] + [t.replace("@.", f"@{i}.") for t, i in INSTANCES.items()]
    r = subprocess.run(["systemd-analyze", "verify", *names], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0 and r.stderr == "" and r.stdout == "", r.stderr + r.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_verify_catches_a_missing_binary(tmp_path):
    _install_units(tmp_path, str(tmp_path / "nowhere"))
    r = subprocess.run(["systemd-analyze", "verify", "dfs-data@0.service"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode != 0 and "nowhere" in r.stderr


def _unit_lines(path: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in _read(path).splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def _unescape(s: str) -> str:
    return re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), s.replace("-", "/"))


def _systemd_argv(value: str, instance: str, env: dict[str, str]) -> list[str]:
    """What systemd makes of an Exec line: specifiers, quotes, $VAR / ${VAR}, $$."""
    value = value.lstrip("-")
    spec = {"%": "%", "i": instance, "I": _unescape(instance), "f": "/" + _unescape(instance), "S": "/var/lib"}
    value = re.sub(r"%(.)", lambda m: spec[m.group(1)], value)
    argv = []
    for w in shlex.split(value):
        if re.fullmatch(r"\$[A-Za-z_]\w*", w):
            argv += env.get(w[1:], "").split()
            continue
        argv.append(re.sub(r"\$\$|\$\{(\w+)\}", lambda m: "$" if m.group(0) == "$$" else env[m.group(1)], w))
    return argv


def test_units_run_the_real_commands(tmp_path):
    """Each unit's ExecStart, expanded as systemd would and run against a
    recording `dfs`, gives argv that the real `dfs` CLI accepts."""
    prefix = tmp_path / "opt"
    fake = prefix / ".venv" / "bin" / "dfs"
    fake.parent.mkdir(parents=True)
    log = tmp_path / "argv.jsonl"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    _install_units(tmp_path / "units", str(prefix))
    env = {"DFS_MOUNT_OPTS": "--writeback-cache"}
    for unit, inst in INSTANCES.items():
        lines = _unit_lines(str(tmp_path / "units" / unit))
        assert lines["Restart"] == ["on-failure"] and int(lines["LimitNOFILE"][0]) >= 65536
        assert "network-online.target" in " ".join(lines["After"])
        for value in lines.get("ExecStartPre", []) + lines["ExecStart"] + lines.get("ExecStop", []):
            argv = _systemd_argv(value, inst, env)
            argv = [a.replace("/etc/dfs/cluster.toml", EXAMPLE) for a in argv]
            if argv[0] == "/bin/mkdir":
                continue
            subprocess.run(argv, check=True, timeout=30)
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    assert calls == [
        ["mgmt-server", "--config", EXAMPLE, "--replica", "2", "--data", "/var/lib/dfs/mgmt-2"],
        ["meta-server", "--config", EXAMPLE, "--shard", "1", "--replica", "2", "--data", "/var/lib/dfs/meta-1-2"],
        ["data-server", "--config", EXAMPLE, "--server", "0"],
        ["umount", "/mnt/dfs"],
        ["mount", "/mnt/dfs", "--foreground", "--cluster", "/etc/dfs/client.toml", "--writeback-cache"],
        ["umount", "/mnt/dfs"],
    ]
    for args in calls:  # the real CLI parses every one of them
        cli.commands[args[0]].make_context(args[0], list(args[1:]))


def test_units_need_the_token_file_and_hold_no_secret(cfg):
    """Every unit asserts the token file the bootstrap writes (servers read it
    through the cluster file, the mount through client.toml); no unit carries a
    secret, not even through its environment."""
    for u in bootstrap.UNIT_FILES:
        text = _read(os.path.join(UNITS, u))
        assert cfg.auth_token not in text and cfg.raft_password not in text
        assert "DFS_TOKEN" not in text and "raft_password" not in text and "client_token =" not in text
        if u != "dfs.target":
            assert bootstrap.TOKEN in _unit_lines(os.path.join(UNITS, u))["AssertPathExists"], u
    mount = _unit_lines(os.path.join(UNITS, "dfs-mount@.service"))
    assert mount["AssertPathExists"] == [bootstrap.CLIENT_FILE, bootstrap.TOKEN]
    assert f"--cluster {bootstrap.CLIENT_FILE}" in mount["ExecStart"][0]


def test_state_directory_matches_data_flag():
    for unit, kind in (("dfs-mgmt@.service", "mgmt"), ("dfs-meta@.service", "meta")):
        lines = _unit_lines(os.path.join(UNITS, unit))
        assert lines["StateDirectory"] == [f"dfs/{kind}-%i"]
        assert f"%S/dfs/{kind}-%i" in lines["ExecStart"][0]


def test_mount_unit_needs_fuse_and_unmounts_on_stop():
    lines = _unit_lines(os.path.join(UNITS, "dfs-mount@.service"))
    assert "modprobe@fuse.service" in lines["Wants"][0] and "modprobe@fuse.service" in lines["After"][0]
    assert lines["ExecStop"] == ["/opt/dfs/.venv/bin/dfs umount %f"]
    assert "--foreground" in lines["ExecStart"][0]


@pytest.mark.skipif(shutil.which("systemd-escape") is None, reason="systemd-escape not installed")
@pytest.mark.parametrize("path", ["/mnt/dfs", "/", "/data/my dfs-1", "/mnt//x/", "/.hidden/a.b", "/mnt/ünï"])
def test_escape_path_is_systemds(path):
    want = subprocess.run(["systemd-escape", "--path", path], capture_output=True, text=True, check=True).stdout
    assert bootstrap.escape_path(path) == want.strip()


# --- bootstrap over ssh -------------------------------------------------------------

def _dry_run(*args: str) -> str:
    r = subprocess.run([sys.executable, os.path.join(REPO, "cluster", "bootstrap.py"), *args, "--dry-run"],
                       capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _steps(out: str) -> list[tuple[str, str, str]]:
    """(phase, host, command line) for each step of the printed plan."""
    lines = out.splitlines()
    steps = []
    for i, line in enumerate(lines):
        m = re.match(r"# \[(\w+)\] (\S+): ", line)
        if m:
            steps.append((m.group(1), m.group(2), lines[i + 1]))
    return steps


def _ssh_target_and_remote(line: str) -> tuple[str, str]:
    words = shlex.split(line)
    i = words.index("ssh")
    return words[i + 1], words[i + 2]


def test_dry_run_puts_each_role_on_its_host_in_order(cfg):
    out = _dry_run(EXAMPLE, "--mount", "/mnt/dfs", "--user", "root")
    steps = _steps(out)
    # phases never interleave, and come in the safe order
    order = [p for p, _, _ in steps]
    assert [p for i, p in enumerate(order) if i == 0 or order[i - 1] != p] == ["install", "mgmt", "meta", "data",
                                                                                "mount"]
    started: dict[str, list[tuple[str, str]]] = {}
    for phase, host, line in steps:
        target, remote = _ssh_target_and_remote(line)
        assert target == f"root@{host}"
        if remote.startswith("systemctl enable --now"):
            for unit in remote.split()[3:]:
                started.setdefault(phase, []).append((host, unit))
    want = {"mgmt": [], "meta": [], "data": []}
    for r in plan.roles(cfg):
        want[r.kind].append((r.host, r.unit))
    for kind in ("mgmt", "meta", "data"):
        assert sorted(started[kind]) == sorted(want[kind]), kind
    assert sorted(started["mount"]) == [(h, "dfs-mount@mnt-dfs.service") for h in ("10.0.0.1", "10.0.0.2", "10.0.0.3")]
    # the concrete placement of the example
    assert ("10.0.0.2", "dfs-meta@1-1.service") in started["meta"]
    assert ("10.0.0.3", "dfs-mgmt@2.service") in started["mgmt"]
    # each server is waited for on its own address before the next phase
    waits = [(h, line) for p, h, line in steps if "/dev/tcp/" in line]
    assert len(waits) == len(plan.roles(cfg))
    for h, line in waits:
        assert f"/dev/tcp/{h}/" in line


def test_dry_run_install_steps(cfg):
    steps = _steps(_dry_run(EXAMPLE, "--mount", "/mnt/dfs"))
    per_host: dict[str, list[str]] = {}
    for phase, host, line in steps:
        if phase == "install":
            per_host.setdefault(host, []).append(line)
    assert list(per_host) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    for host, lines in per_host.items():
        text = "\n".join(lines)
        assert lines[0].startswith(f"git -C {REPO} archive --format=tar HEAD | ssh {host} ")
        assert "bash /opt/dfs/scripts/bootstrap.sh" in lines[1]
        assert f"< {EXAMPLE}" in text and "chmod 0640 /etc/dfs/cluster.toml.new" in text
        assert "install -d -o dfs -g dfs -m 0750 /srv/dfs/nvme0 /srv/dfs/nvme1" in text
        assert "/opt/dfs/cluster/systemd/dfs-meta@.service /opt/dfs/cluster/systemd/dfs-data@.service" in text
        assert '{ address = "10.0.0.3:7000" }' in text and "/etc/dfs/client.toml.new" in text
        assert "chown dfs:dfs /etc/dfs/client.token.new && chmod 0600 /etc/dfs/client.token.new" in text
        # the user exists before the cluster file and the token are given to it
        assert text.index("useradd") < text.index("chown root:dfs") < text.index("chown dfs:dfs")


def test_dry_run_is_deterministic_and_runs_nothing(tmp_path):
    rec = tmp_path / "ssh"
    rec.write_text(f"#!/bin/sh\ntouch {tmp_path}/ran\n")
    rec.chmod(0o755)
    a = _dry_run(EXAMPLE, "--ssh", str(rec))
    assert a == _dry_run(EXAMPLE, "--ssh", str(rec))
    assert not (tmp_path / "ran").exists()


def test_clients_get_mounts_but_never_the_raft_password():
    steps = _steps(_dry_run(EXAMPLE, "--mount", "/mnt/dfs", "--client", "10.0.0.50", "--no-install"))
    client = [(p, line) for p, h, line in steps if h == "10.0.0.50"]
    assert [p for p, _ in client] == ["install"] * 4 + ["mount", "mount"]
    remote = "\n".join(_ssh_target_and_remote(line)[1] for _, line in client)
    assert "cluster.toml" not in remote and "useradd" not in remote
    assert "/etc/dfs/mount.env" in remote and "dfs-mount@mnt-dfs.service" in remote
    assert "chown root:root /etc/dfs/client.token.new && chmod 0600" in remote
    # the one line that reads the cluster file takes only the token out of it
    (line,) = [line for _, line in client if EXAMPLE in line]
    assert '["client_token"]' in line and "/etc/dfs/client.token.new" in line
    assert not any("git " in line or "bootstrap.sh" in line for _, _, line in steps)  # --no-install


def test_prefix_rewrites_installed_units():
    out = _dry_run(EXAMPLE, "--prefix", "/srv/dfs-sw", "--wait-timeout", "0")
    assert "bash /srv/dfs-sw/scripts/bootstrap.sh" in out
    remotes = [_ssh_target_and_remote(line)[1] for _, _, line in _steps(out)]
    units = [r for r in remotes if "/etc/systemd/system/" in r]
    assert len(units) == 3
    for r in units:
        assert r.startswith("install -m 0644 /srv/dfs-sw/cluster/systemd/dfs.target ")
        assert "&& sed -i 's#/opt/dfs/#/srv/dfs-sw/#g' /etc/systemd/system/dfs.target " in r
    assert "/dev/tcp" not in out


def test_roles_follow_addresses(tmp_path):
    """Data servers on machines of their own get only the data role."""
    def move(d):
        for i, x in enumerate(d["data"]):
            x["address"] = f"10.0.2.{i + 1}:7200"

    out = _dry_run(_write_cluster(tmp_path, move))
    assert "# host 10.0.2.1: data 0\n" in out and "# host 10.0.0.1: mgmt 0; meta 0-0 1-0\n" in out
    steps = _steps(out)
    assert [(p, h) for p, h, line in steps if "enable --now" in line and h.startswith("10.0.2.")] == [
        ("data", "10.0.2.1"), ("data", "10.0.2.2"), ("data", "10.0.2.3")]


@pytest.mark.parametrize("password", ["", "short", "change-me-change-me-change-me", "0000000000000000000000",
                                      "replace-me-with-64-hex-digits-from-secrets-token-hex"])
def test_bootstrap_and_renderer_refuse_weak_raft_passwords(tmp_path, password):
    with open(EXAMPLE, "rb") as f:
        d = tomllib.load(f)
    d["raft_password"] = password
    path = tmp_path / "cluster.toml"
    path.write_text(tomli_w.dumps(d))  # as an operator may write it: the loader has not seen it
    for cmd in (["-m", "cluster.bootstrap", str(path), "--dry-run"],
                [os.path.join(REPO, "cluster", "render_k8s.py"), str(path)]):
        r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
        assert r.returncode != 0 and "raft_password" in r.stderr, r.stderr


def _record_run(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, list[tuple[str, str, bytes]]]:
    """A real run whose `--ssh` records each call's target, remote command and
    stdin, and runs nothing."""
    rec = tmp_path / "fake-ssh"
    calls = tmp_path / "calls"
    calls.mkdir()
    rec.write_text("#!/bin/sh\nn=$(( $(ls " + str(calls) + " | wc -l) / 2 ))\n"
                   f"printf '%s\\n' \"$@\" > {calls}/$n.args\ncat > {calls}/$n.stdin\n")
    rec.chmod(0o755)
    r = subprocess.run([sys.executable, "-m", "cluster.bootstrap", *args, "--ssh", str(rec)], capture_output=True,
                       text=True, cwd=REPO, timeout=120, check=False)
    got = []
    for i in range(len(os.listdir(calls)) // 2):
        target, remote = (calls / f"{i}.args").read_text().split("\n", 1)
        got.append((target, remote.rstrip("\n"), (calls / f"{i}.stdin").read_bytes()))
    return r, got


def test_real_run_sends_exactly_the_printed_commands(tmp_path):
    """Not a dry run: `--ssh` is a recorder that keeps each call's arguments
    and stdin and runs nothing, so the runner is exercised without a network."""
    r, got = _record_run(tmp_path, EXAMPLE, "--no-install", "--mount", "/mnt/dfs", "--wait-timeout", "0")
    assert r.returncode == 0, r.stderr
    steps = _steps(r.stdout)
    assert len(got) == len(steps)
    for (phase, host, line), (target, remote, stdin) in zip(steps, got):
        assert (target, remote) == _ssh_target_and_remote(line.replace(str(tmp_path / "fake-ssh"), "ssh"))
        if "cluster.toml.new" in remote:
            assert stdin == _read(EXAMPLE, "rb")
        if "mount.env.new" in remote:
            assert stdin == b"DFS_MOUNT_OPTS=\n"
        if "client.token.new" in remote:  # piped out of the cluster file's client_token
            assert stdin == ClusterConfig.load(EXAMPLE).client_token.encode()


def _replay(calls: list[tuple[str, str, bytes]], root) -> None:
    """Run every recorded remote command that writes under /etc/dfs here, with
    /etc/dfs moved to ROOT/HOST/etc/dfs and chown only logged (not root here)."""
    for target, remote, stdin in calls:
        if f"{bootstrap.ETC}/" not in remote or ".new" not in remote:
            continue
        host = root / target
        host.mkdir(exist_ok=True)
        script = (f"chown() {{ printf '%s %s\\n' \"$1\" \"$2\" >> {host}/chown.log; }}\n"
                  + remote.replace(bootstrap.ETC, f"{host}{bootstrap.ETC}"))
        # client.toml, made here, names the token file by its place on the host
        stdin = stdin.replace(bootstrap.ETC.encode() + b"/", f"{host}{bootstrap.ETC}/".encode())
        subprocess.run(["bash", "-c", script], input=stdin, check=True, timeout=30)


def _mode(p) -> int:
    return os.stat(p).st_mode & 0o777


def test_dry_run_ships_the_token_0600_and_never_prints_it(tmp_path, cfg):
    token = "tok-" + "x7" * 20
    (tmp_path / "client.token").write_text(token + "\n")
    path = _write_cluster(tmp_path, lambda d: (d.pop("client_token"), d.update(client_token_file="client.token")))
    r = subprocess.run([sys.executable, os.path.join(REPO, "cluster", "bootstrap.py"), path, "--dry-run",
                        "--mount", "/mnt/dfs", "--client", "10.0.0.50"], capture_output=True, text=True,
                       timeout=60, cwd=REPO, check=False)
    assert r.returncode == 0, r.stderr
    assert token not in r.stdout + r.stderr and cfg.raft_password not in r.stdout + r.stderr
    assert f"# client token: {tmp_path}/client.token (client_token_file)" in r.stdout
    writes = {}
    for phase, host, line in _steps(r.stdout):
        if "/etc/dfs/client.token.new" in line:
            writes[host] = line
    assert sorted(writes) == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.50"]
    for host, line in writes.items():
        owner = "root" if host == "10.0.0.50" else "dfs"
        assert line.endswith(f"< {tmp_path}/client.token")
        assert (f"install -d -m 0755 /etc/dfs && umask 077 && cat > /etc/dfs/client.token.new && "
                f"chown {owner}:{owner} /etc/dfs/client.token.new && chmod 0600 /etc/dfs/client.token.new && "
                "mv -f /etc/dfs/client.token.new /etc/dfs/client.token") == _ssh_target_and_remote(line)[1]
    # the example's inline token is piped out of the cluster file, not printed either
    out = _dry_run(EXAMPLE, "--mount", "/mnt/dfs")
    assert cfg.client_token not in out and cfg.raft_password not in out


def test_real_run_leaves_each_host_its_files_and_no_more(tmp_path):
    """A real run (recorded ssh) on a cluster file with a token file and [tls],
    replayed into one directory per host: servers get the cluster file naming
    the token file, the token 0600 for dfs, the TLS files (key 0600); the
    client host gets the token (root) and the CA only; every host's
    client.toml gives the real credential lookup the token and the CA."""
    from dfs.client.api import find_credentials

    token = "a-token-from-a-file-0123456789"
    path = _tls_cluster(tmp_path, token)
    want = ClusterConfig.load(path)
    r, calls = _record_run(tmp_path, path, "--no-install", "--mount", "/mnt/dfs", "--client", "10.0.0.50",
                           "--wait-timeout", "0")
    assert r.returncode == 0, r.stderr
    key = (tmp_path / "pki" / "server.key").read_text()
    printed = r.stdout + r.stderr + "".join(remote for _, remote, _ in calls)
    assert token not in printed and want.raft_password not in printed and "MIIBserver.key" not in printed
    assert len(calls) == len(_steps(r.stdout))
    root = tmp_path / "hosts"
    root.mkdir()
    _replay(calls, root)
    etc = bootstrap.ETC.lstrip("/")
    for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        d = root / host / etc
        assert sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()) == [
            "client.token", "client.toml", "cluster.toml", "mount.env", "pki/ca.pem", "pki/server.key",
            "pki/server.pem"]
        assert {n: _mode(d / n) for n in ("cluster.toml", "client.token", "pki/server.key", "pki/ca.pem",
                                          "client.toml")} == {"cluster.toml": 0o640, "client.token": 0o600,
                                                              "pki/server.key": 0o600, "pki/ca.pem": 0o644,
                                                              "client.toml": 0o644}
        owners = dict(reversed(ln.split()) for ln in (root / host / "chown.log").read_text().splitlines())
        assert owners[f"{d}/client.token.new"] == "dfs:dfs" and owners[f"{d}/pki/server.key.new"] == "dfs:dfs"
        assert owners[f"{d}/cluster.toml.new"] == "root:dfs"
        got = ClusterConfig.load(str(d / "cluster.toml"))
        assert got.client_token is None and got.client_token_file == f"{d}/client.token"
        assert got.auth_token == token and got.raft_password == want.raft_password
        assert [(x.kind, x.ids, x.listen) for x in plan.roles(got)] == [(x.kind, x.ids, x.listen)
                                                                      for x in plan.roles(want)]
        assert _read(got.tls.key) == key and got.tls.server_name == "dfs.internal"
        # the operator's file line for line (comments kept), the token line replaced
        assert _read(str(d / "cluster.toml")) == f'client_token_file = "{d}/client.token"\n' + "".join(
            ln for ln in _read(path).splitlines(keepends=True) if not ln.startswith("client_token_file ="))
    d = root / "10.0.0.50" / etc
    assert sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()) == [
        "client.token", "client.toml", "mount.env", "pki/ca.pem"]
    assert _mode(d / "client.token") == 0o600
    assert "root:root" in (root / "10.0.0.50" / "chown.log").read_text()
    assert "dfs:" not in (root / "10.0.0.50" / "chown.log").read_text()
    for p in d.rglob("*"):
        if p.is_file():
            assert want.raft_password not in p.read_text() and "server.key" not in p.read_text()
    for host in ("10.0.0.1", "10.0.0.50"):
        c = find_credentials(str(root / host / etc / "client.toml"))
        assert c.token == token and c.ca == (tmp_path / "pki" / "ca.pem").read_bytes()
        assert c.server_name == "dfs.internal"


def test_bootstrap_wants_a_token_or_generates_one(tmp_path):
    path = _write_cluster(tmp_path, lambda d: d.pop("client_token"))
    original = _read(path)
    r = subprocess.run([sys.executable, "-m", "cluster.bootstrap", path, "--dry-run"], capture_output=True,
                       text=True, cwd=REPO, timeout=60, check=False)
    assert r.returncode != 0 and "--generate-token" in r.stderr
    # a dry run says it would generate one and writes nothing
    out = _dry_run(path, "--generate-token")
    assert f"--generate-token makes one into {tmp_path}/client.token" in out
    assert f"< {tmp_path}/client.token" in out
    assert not (tmp_path / "client.token").exists() and _read(path) == original
    # a real run makes it, names it in the cluster file and ships it, unprinted
    r, calls = _record_run(tmp_path, path, "--generate-token", "--no-install", "--wait-timeout", "0")
    assert r.returncode == 0, r.stderr
    tok = tmp_path / "client.token"
    token = tok.read_text().strip()
    assert _mode(tok) == 0o600 and len(token) >= 40 and token not in r.stdout + r.stderr
    assert ClusterConfig.load(path).auth_token == token
    edited = _read(path)
    assert 'client_token_file = "client.token"' in edited
    assert [ln for ln in edited.splitlines() if ln not in ("client_token_file = \"client.token\"", "")
            and "--generate-token" not in ln] == [ln for ln in original.splitlines() if ln]
    shipped = [stdin for _, remote, stdin in calls if "client.token.new" in remote]
    assert len(shipped) == 3 and set(shipped) == {tok.read_bytes()}
    # running again keeps the token and the file
    (tmp_path / "calls").rename(tmp_path / "calls-1")
    r, _ = _record_run(tmp_path, path, "--generate-token", "--no-install", "--wait-timeout", "0")
    assert r.returncode == 0 and tok.read_text().strip() == token and _read(path) == edited


# --- Kubernetes --------------------------------------------------------------------

@pytest.fixture(scope="module")
def docs(cfg) -> list[dict]:
    """The manifests of the (usable) example, as kubectl would read them."""
    text = render_k8s.dump(render_k8s.render(cfg, render_k8s.Options()), "example-cluster.toml")
    return [d for d in yaml.safe_load_all(text) if d is not None]


def _example_docs() -> list[dict]:
    with open(K8S_EXAMPLE) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _by(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_checked_in_manifests_are_a_fresh_render():
    with example_secrets():
        ex = ClusterConfig.load(EXAMPLE_SRC)
    fresh = render_k8s.dump(render_k8s.render(ex, render_k8s.Options()), "example-cluster.toml", example=True)
    assert _read(K8S_EXAMPLE) == fresh, "run: python cluster/render_k8s.py " \
        "cluster/example-cluster.toml --example -o cluster/k8s/example.yaml"


def test_renderer_cli_writes_the_same(tmp_path):
    out = tmp_path / "x.yaml"
    subprocess.run([sys.executable, os.path.join(REPO, "cluster", "render_k8s.py"), EXAMPLE_SRC, "--example",
                    "-o", str(out)], check=True, timeout=60)
    assert out.read_text() == _read(K8S_EXAMPLE)


def test_the_example_with_its_placeholders_is_refused_everywhere(tmp_path):
    """The example's secrets are placeholders: the loader (every server), the bootstrap and the
    renderer refuse them; only the renderer's --example takes them, and the servers of such
    manifests still refuse to start (their cluster file is assembled with the placeholder)."""
    with pytest.raises(ValueError, match="raft_password looks like a placeholder"):
        ClusterConfig.load(EXAMPLE_SRC)
    for cmd in (["-m", "cluster.bootstrap", EXAMPLE_SRC, "--dry-run"],
                [os.path.join(REPO, "cluster", "render_k8s.py"), EXAMPLE_SRC]):
        r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
        assert r.returncode != 0 and "raft_password looks like a placeholder" in r.stderr, r.stderr
    ex = _example_docs()
    where = _pod_dirs(tmp_path, ex, "dfs-server", "cluster.toml")
    c = _by(ex, "StatefulSet")["dfs-mgmt"]["spec"]["template"]["spec"]["containers"][0]
    subprocess.run(["/bin/sh", "-c", _in_pod_dirs(c["command"][2].split(" && exec ")[0], where)], check=True,
                   timeout=30)
    with pytest.raises(ValueError, match="placeholder"):
        ClusterConfig.load(os.path.join(where[render_k8s.RUN_DIR], "cluster.toml"))


def test_a_salt_is_required_or_generated(tmp_path):
    """No raft_salt: the renderer refuses; the bootstrap refuses unless --generate-salt, which adds
    one to the file (a dry run says so and writes nothing); the loader still takes such an older
    file, with the keys derived as before salts."""
    path = _write_cluster(tmp_path, lambda d: d.pop("raft_salt"))
    old = ClusterConfig.load(path)
    assert old.raft_salt is None and old.raft_key == old.raft_password
    with pytest.raises(ValueError, match="no raft_salt"):
        render_k8s.render(old, render_k8s.Options())
    r = subprocess.run([sys.executable, "-m", "cluster.bootstrap", path, "--dry-run"], capture_output=True,
                       text=True, cwd=REPO, timeout=60, check=False)
    assert r.returncode != 0 and "--generate-salt" in r.stderr
    original = _read(path)
    assert "--generate-salt adds one" in _dry_run(path, "--generate-salt") and _read(path) == original
    r, _ = _record_run(tmp_path, path, "--generate-salt", "--no-install", "--wait-timeout", "0")
    assert r.returncode == 0, r.stderr
    new = ClusterConfig.load(path)
    assert len(new.raft_salt) == 32 and new.raft_key not in (new.raft_password, old.raft_key)
    assert new.internal_token != old.internal_token


def test_manifests_agree_with_the_cluster_file(cfg, docs):
    sts, svc = _by(docs, "StatefulSet"), _by(docs, "Service")
    assert sorted(sts) == sorted(["dfs-mgmt", "dfs-data"] + [f"dfs-meta-{s.id}" for s in cfg.shards])
    assert sts["dfs-mgmt"]["spec"]["replicas"] == len(cfg.mgmt)
    assert sts["dfs-data"]["spec"]["replicas"] == len(cfg.data)
    for s in cfg.shards:
        assert sts[f"dfs-meta-{s.id}"]["spec"]["replicas"] == len(s.replicas)
    groups = {"dfs-mgmt": [(m.address, m.raft) for m in cfg.mgmt],
              "dfs-data": [(d.address,) for d in cfg.data]}
    groups.update({f"dfs-meta-{s.id}": [(r.address, r.raft) for r in s.replicas] for s in cfg.shards})
    for name, addrs in groups.items():
        st, sv = sts[name], svc[name]
        assert st["spec"]["serviceName"] == name and sv["spec"]["clusterIP"] == "None"
        assert sv["spec"]["publishNotReadyAddresses"] is True
        assert sv["spec"]["selector"].items() <= st["spec"]["template"]["metadata"]["labels"].items()
        assert st["spec"]["selector"]["matchLabels"].items() <= st["spec"]["template"]["metadata"]["labels"].items()
        (c,) = st["spec"]["template"]["spec"]["containers"]
        cports = {p["containerPort"] for p in c["ports"]}
        sports = {p["port"] for p in sv["spec"]["ports"]}
        for a in (a for t in addrs for a in t):  # every address of the cluster file is a port
            assert plan.port_of(a) in cports and plan.port_of(a) in sports, (name, a)
        assert len({p["name"] for p in c["ports"]}) == len(c["ports"])
        assert all(len(p["name"]) <= 15 for p in c["ports"])


def test_meta_is_one_statefulset_per_shard(cfg, docs):
    sts = _by(docs, "StatefulSet")
    for s in cfg.shards:
        script = sts[f"dfs-meta-{s.id}"]["spec"]["template"]["spec"]["containers"][0]["command"][2]
        assert f"dfs meta-server --config /run/dfs/cluster.toml --shard {s.id} --replica " in script
    pdb = _by(docs, "PodDisruptionBudget")
    assert pdb["dfs-meta-0"]["spec"]["minAvailable"] == 2 and pdb["dfs-mgmt"]["spec"]["minAvailable"] == 2


def test_configmap_is_the_cluster_file_with_pod_addresses(cfg, docs):
    cm = _by(docs, "ConfigMap")["dfs-cluster"]["data"]["cluster.toml"]
    secret = _by(docs, "Secret")["dfs-server"]["stringData"]
    d = tomllib.loads(cm)
    assert "raft_password" not in d and secret["raft_password"] == cfg.raft_password
    assert "client_token" not in d and secret["client.token"] == cfg.auth_token
    assert d["client_token_file"] == f"{render_k8s.SECRET_DIR}/client.token"
    k = ClusterConfig.from_dict({**d, "raft_password": secret["raft_password"]})
    want = plan.roles(cfg)
    got = plan.roles(k)
    assert [(r.kind, r.ids, r.targets) for r in got] == [(r.kind, r.ids, r.targets) for r in want]
    assert [tuple(map(plan.port_of, r.listen)) for r in got] == [tuple(map(plan.port_of, r.listen)) for r in want]
    svc = _by(docs, "Service")
    for r in got:
        group = "dfs-mgmt" if r.kind == "mgmt" else "dfs-data" if r.kind == "data" else f"dfs-meta-{r.ids[0]}"
        assert r.host == f"{group}-{r.ids[-1]}.{group}.dfs.svc.cluster.local" and group in svc
        assert all(plan.host_of(a) == r.host for a in r.listen)


def _pod_dirs(tmp_path, docs, secret: str, configmap_key: str) -> dict[str, str]:
    """The ConfigMap and a Secret as a pod sees them, under tmp_path: path in
    the pod -> path here (the files name SECRET_DIR, rewritten likewise)."""
    where = {render_k8s.CONFIG_DIR: str(tmp_path / "etc"), render_k8s.SECRET_DIR: str(tmp_path / "secret"),
             render_k8s.RUN_DIR: str(tmp_path / "run")}
    for d in where.values():
        os.makedirs(d, exist_ok=True)
    cm = _by(docs, "ConfigMap")["dfs-cluster"]["data"][configmap_key]
    with open(os.path.join(where[render_k8s.CONFIG_DIR], configmap_key), "w") as f:
        f.write(cm.replace(render_k8s.SECRET_DIR, where[render_k8s.SECRET_DIR]))
    for k, v in _by(docs, "Secret")[secret]["stringData"].items():
        with open(os.path.join(where[render_k8s.SECRET_DIR], k), "w") as f:
            f.write(v)
    return where


def _in_pod_dirs(script: str, where: dict[str, str]) -> str:
    for pod, here in where.items():
        script = script.replace(pod, here)
    return script


def test_container_script_assembles_the_cluster_file(tmp_path, cfg, docs):
    """Run a pod's shell script with a recording `dfs`: the password from the
    mounted Secret lands in a file the real loader accepts, the token is read
    from the Secret through client_token_file, the ordinal becomes the id."""
    where = _pod_dirs(tmp_path, docs, "dfs-server", "cluster.toml")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "dfs").write_text(f"#!{sys.executable}\nimport json, sys\n"
                              f"print(json.dumps(sys.argv[1:]))\n")
    (bin_ / "dfs").chmod(0o755)
    sts = _by(docs, "StatefulSet")
    for name, pod, want in (("dfs-mgmt", "dfs-mgmt-2", ["mgmt-server", "--replica", "2", "--data",
                                                         "/var/lib/dfs/mgmt"]),
                            ("dfs-meta-1", "dfs-meta-1-0", ["meta-server", "--shard", "1", "--replica", "0", "--data",
                                                            "/var/lib/dfs/meta"]),
                            ("dfs-data", "dfs-data-1", ["data-server", "--server", "1"])):
        c = sts[name]["spec"]["template"]["spec"]["containers"][0]
        assert [e["name"] for e in c["env"]] == ["DFS_POD_NAME"]  # no secret in the environment
        script = _in_pod_dirs(c["command"][2], where)
        env = {"PATH": f"{bin_}:/usr/bin:/bin", "DFS_POD_NAME": pod}
        r = subprocess.run(c["command"][:2] + [script], env=env, capture_output=True, text=True, check=True)
        argv = json.loads(r.stdout)
        conf = str(tmp_path / "run" / "cluster.toml")
        assert argv == [want[0], "--config", conf, *want[1:]]
        loaded = ClusterConfig.load(conf)
        assert loaded.raft_password == cfg.raft_password and loaded.auth_token == cfg.auth_token
        assert oct(os.stat(conf).st_mode & 0o777) == "0o600"
        cli.commands[argv[0]].make_context(argv[0], argv[1:])


def test_data_targets_are_volume_claims(cfg, docs):
    st = _by(docs, "StatefulSet")["dfs-data"]
    claims = {c["metadata"]["name"] for c in st["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in st["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    for d in cfg.data:
        for t in d.targets:
            assert mounts[t.path] in claims
    for name in ("dfs-mgmt", "dfs-meta-0"):
        st = _by(docs, "StatefulSet")[name]
        assert [c["metadata"]["name"] for c in st["spec"]["volumeClaimTemplates"]] == ["state"]


def test_mount_daemonset(cfg, docs):
    ds = _by(docs, "DaemonSet")["dfs-mount"]["spec"]["template"]["spec"]
    (c,) = ds["containers"]
    assert c["securityContext"]["privileged"] is True
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/mnt/dfs"]["mountPropagation"] == "Bidirectional"
    vols = {v["name"]: v for v in ds["volumes"]}
    assert vols[mounts["/dev/fuse"]["name"]]["hostPath"] == {"path": "/dev/fuse", "type": "CharDevice"}
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["dfs", "umount", "/mnt/dfs"]
    script = c["command"][2]
    assert script.endswith("exec dfs mount /mnt/dfs --foreground --cluster /etc/dfs/client.toml")
    argv = shlex.split(script.rsplit("exec ", 1)[1])
    cli.commands[argv[1]].make_context(argv[1], argv[2:])
    # clients never see the Raft password: only the client Secret and client.toml
    assert vols[mounts[render_k8s.SECRET_DIR]["name"]]["secret"]["secretName"] == "dfs-client"
    assert vols[mounts["/etc/dfs"]["name"]]["configMap"]["items"] == [{"key": "client.toml", "path": "client.toml"}]
    assert "dfs-server" not in json.dumps(ds) and cfg.raft_password not in json.dumps(ds)


def test_mount_reads_client_toml_and_the_token(tmp_path, cfg, docs):
    """client.toml, as the mount pod has it, gives the mgmt pod addresses and
    (through the mounted Secret) the token, to the real credential lookup."""
    from dfs.client.api import find_credentials
    from dfs.common.config import ClientConfig

    where = _pod_dirs(tmp_path, docs, "dfs-client", "client.toml")
    path = os.path.join(where[render_k8s.CONFIG_DIR], "client.toml")
    c = ClientConfig.load(path)
    assert c.mgmt == tuple(f"dfs-mgmt-{m.id}.dfs-mgmt.dfs.svc.cluster.local:{plan.port_of(m.address)}"
                           for m in cfg.mgmt)
    assert find_credentials(path).token == cfg.auth_token
    assert sorted(_by(docs, "Secret")["dfs-client"]["stringData"]) == ["client.token"]


def _secret_values(docs) -> list[str]:
    return [v for d in docs if d["kind"] == "Secret" for v in d["stringData"].values()]


def test_secrets_are_mounted_where_needed_and_nowhere_else(docs):
    """Every server pod mounts dfs-server, the mount pods dfs-client; every Secret
    is used; no secret value appears in any other object (ConfigMap included)."""
    secrets_ = _by(docs, "Secret")
    assert sorted(secrets_) == ["dfs-client", "dfs-server"]
    used = set()
    for d in docs:
        if d["kind"] not in ("StatefulSet", "DaemonSet"):
            continue
        pod = d["spec"]["template"]["spec"]
        want = "dfs-client" if d["kind"] == "DaemonSet" else "dfs-server"
        vols = {v["name"]: v for v in pod["volumes"]}
        (c,) = pod["containers"]
        m = {m["mountPath"]: m for m in c["volumeMounts"]}[render_k8s.SECRET_DIR]
        assert m["readOnly"] is True and vols[m["name"]]["secret"]["secretName"] == want, d["metadata"]["name"]
        assert vols[m["name"]]["secret"]["defaultMode"] in (0o400, 0o440)
        assert [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v] == [want]
        used.add(want)
    assert used == set(secrets_)
    values = _secret_values(docs)
    assert values
    for d in docs:
        if d["kind"] != "Secret":
            text = json.dumps(d)
            assert not [v for v in values if v in text], (d["kind"], d["metadata"]["name"])


def _tls_cluster(tmp_path, token: str | None = "a-token-from-a-file-0123456789") -> str:
    (tmp_path / "pki").mkdir()
    for name in ("ca.pem", "server.pem", "server.key"):
        (tmp_path / "pki" / name).write_text(f"-----BEGIN {name}-----\nMIIB{name}\n-----END {name}-----\n")
    if token is not None:
        (tmp_path / "client.token").write_text(token + "\n")
        (tmp_path / "client.token").chmod(0o600)

    def tls(d):
        d.pop("client_token", None)
        if token is not None:
            d["client_token_file"] = "client.token"
        d["tls"] = {"ca": "pki/ca.pem", "cert": "pki/server.pem", "key": "pki/server.key", "server_name": "dfs.internal"}

    return _write_cluster(tmp_path, tls)


def test_tls_material_and_token_file_go_into_the_secrets(tmp_path):
    path = _tls_cluster(tmp_path)
    docs = render_k8s.render(ClusterConfig.load(path), render_k8s.Options())
    docs = yaml.safe_load_all(render_k8s.dump(docs, "x.toml"))  # what kubectl would read
    docs = [d for d in docs if d]
    server, client = (_by(docs, "Secret")[n]["stringData"] for n in ("dfs-server", "dfs-client"))
    pki = tmp_path / "pki"
    assert server["client.token"] == client["client.token"] == "a-token-from-a-file-0123456789"
    assert server["ca.pem"] == client["ca.pem"] == (pki / "ca.pem").read_text()
    assert server["server.pem"] == (pki / "server.pem").read_text()
    assert server["server.key"] == (pki / "server.key").read_text()
    assert sorted(client) == ["ca.pem", "client.token"]  # no server key, no Raft password
    cm = _by(docs, "ConfigMap")["dfs-cluster"]["data"]
    sd = render_k8s.SECRET_DIR
    assert tomllib.loads(cm["cluster.toml"])["tls"] == {"ca": f"{sd}/ca.pem", "cert": f"{sd}/server.pem",
                                                        "key": f"{sd}/server.key", "server_name": "dfs.internal"}
    assert tomllib.loads(cm["client.toml"])["tls"] == {"ca": f"{sd}/ca.pem", "server_name": "dfs.internal"}
    values = _secret_values(docs)
    for d in docs:
        if d["kind"] != "Secret":
            assert not [v for v in values if v in json.dumps(d)], d["metadata"]["name"]
    # a data server's script, run: its cluster file finds the token and every TLS file
    where = _pod_dirs(tmp_path / "pod", docs, "dfs-server", "cluster.toml")
    c = _by(docs, "StatefulSet")["dfs-data"]["spec"]["template"]["spec"]["containers"][0]
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "dfs").write_text("#!/bin/sh\n")
    (bin_ / "dfs").chmod(0o755)
    subprocess.run(c["command"][:2] + [_in_pod_dirs(c["command"][2], where)], check=True,
                   env={"PATH": f"{bin_}:/usr/bin:/bin", "DFS_POD_NAME": "dfs-data-0"})
    loaded = ClusterConfig.load(os.path.join(where[render_k8s.RUN_DIR], "cluster.toml"))
    assert loaded.auth_token == "a-token-from-a-file-0123456789"
    for k in ("ca", "cert", "key"):
        assert _read(getattr(loaded.tls, k)) == _read(str(pki / render_k8s.TLS_KEYS[k]))


def test_renderer_wants_a_token_or_generates_one(tmp_path):
    path = _write_cluster(tmp_path, lambda d: d.pop("client_token"))
    cfg = ClusterConfig.load(path)
    with pytest.raises(ValueError, match="--generate-token"):
        render_k8s.render(cfg, render_k8s.Options())
    got = []
    for _ in range(2):
        docs = render_k8s.render(cfg, render_k8s.Options(generate_token=True))
        s = _by(docs, "Secret")
        assert s["dfs-server"]["stringData"]["client.token"] == s["dfs-client"]["stringData"]["client.token"]
        got.append(s["dfs-client"]["stringData"]["client.token"])
    assert got[0] != got[1] and len(got[0]) >= 40
    ClusterConfig.from_dict({**cfg.to_dict(), "client_token": got[0]})  # a token the loader accepts


def test_network_policy_keeps_raft_ports_to_raft_peers(cfg, docs):
    np = _by(docs, "NetworkPolicy")["dfs-raft"]["spec"]
    raft = {plan.port_of(r.raft) for r in plan.roles(cfg) if r.raft}
    grpc = {plan.port_of(r.address) for r in plan.roles(cfg) if r.raft}
    open_rule, peer_rule = np["ingress"]
    assert "from" not in open_rule and {p["port"] for p in open_rule["ports"]} == grpc
    assert {p["port"] for p in peer_rule["ports"]} == raft
    assert peer_rule["from"][0]["podSelector"]["matchLabels"] == np["podSelector"]["matchLabels"]
    for name in ["dfs-mgmt"] + [f"dfs-meta-{s.id}" for s in cfg.shards]:
        labels = _by(docs, "StatefulSet")[name]["spec"]["template"]["metadata"]["labels"]
        assert np["podSelector"]["matchLabels"].items() <= labels.items()


def test_renderer_refuses_ids_that_are_not_ordinals(tmp_path):
    def gap(d):
        d["data"][2]["id"] = 7

    with pytest.raises(ValueError, match="dfs-data"):
        render_k8s.render(ClusterConfig.load(_write_cluster(tmp_path, gap)), render_k8s.Options())


def _kubectl() -> str | None:
    return shutil.which("kubectl")


@pytest.mark.skipif(_kubectl() is None, reason="kubectl not installed")
def test_kubectl_decodes_every_object(docs):
    # --local: no API server; every document must decode as a Kubernetes object
    r = subprocess.run(["kubectl", "label", "--local", "-f", K8S_EXAMPLE, "dfs.io/checked=yes", "-o", "name",
                        "--server", "http://127.0.0.1:9"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    names = [n.split("/", 1)[1] for n in r.stdout.split()]
    assert names == [d["metadata"]["name"] for d in docs]


@pytest.mark.skipif(_kubectl() is None, reason="kubectl not installed")
def test_kubectl_apply_dry_run():
    # client-side dry run still asks an API server for its resource types;
    # point it at a closed loopback port and skip when that is all that failed
    r = subprocess.run(["kubectl", "apply", "--dry-run=client", "--validate=false", "-f", K8S_EXAMPLE,
                        "--server", "http://127.0.0.1:9", "--request-timeout", "5s"],
                       capture_output=True, text=True, timeout=120, check=False)
    if r.returncode != 0 and ("connection refused" in r.stderr or "unable to recognize" in r.stderr):
        pytest.skip("kubectl apply --dry-run=client needs an API server")
    assert r.returncode == 0, r.stderr


# --- the image -----------------------------------------------------------------------

def test_dockerfile_installs_like_the_readme():
    docker = _read(os.path.join(REPO, "cluster", "Dockerfile"))
    boot = _read(os.path.join(REPO, "scripts", "bootstrap.sh"))
    apt = re.search(r"^APT_PKGS=\(([^)]*)\)", boot, re.MULTILINE).group(1).split()
    m = re.search(r"apt-get install -y --no-install-recommends ([^\\\n]+)", docker)
    assert set(apt) <= set(m.group(1).split())
    runs = [ln for ln in docker.replace("\\\n", " ").splitlines() if ln.startswith("RUN ")]
    assert any(re.search(r"(^RUN |&& )bash scripts/bootstrap\.sh( |$)", r) for r in runs)
    # the README's commands (scripts/test.sh, scripts/demo.sh) set up the same way
    readme = _read(os.path.join(REPO, "README.md"))
    for script in ("scripts/test.sh", "scripts/demo.sh"):
        assert f"bash {script}" in readme
        assert "bash scripts/bootstrap.sh" in _read(os.path.join(REPO, script))
    assert re.search(r'^ENTRYPOINT \["dfs"\]$', docker, re.MULTILINE)
    assert f"--uid {render_k8s.UID} " in docker
    for src in re.findall(r"^COPY (.+) \S+$", docker, re.MULTILINE):
        for p in src.split():
            assert os.path.exists(os.path.join(REPO, p)), p
