"""The multi-machine deployment in cluster/: systemd units, the ssh bootstrap,
the Kubernetes manifests and the image recipe, checked against the cluster
file they are made from. Nothing here leaves this machine: ssh is replaced by
a recorder, systemd only verifies, kubectl only parses."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from cluster import bootstrap, plan, render_k8s
from dfs.cli.main import cli
from dfs.common.config import ClusterConfig

EXAMPLE = os.path.join(REPO, "cluster", "example-cluster.toml")
UNITS = os.path.join(REPO, "cluster", "systemd")
K8S_EXAMPLE = os.path.join(REPO, "cluster", "k8s", "example.yaml")


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
    env = {"DFS_MGMT": "10.0.0.1:7000,10.0.0.2:7000", "DFS_MOUNT_OPTS": "--writeback-cache"}
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
        ["mount", "/mnt/dfs", "--foreground", "--mgmt", "10.0.0.1:7000,10.0.0.2:7000", "--writeback-cache"],
        ["umount", "/mnt/dfs"],
    ]
    for args in calls:  # the real CLI parses every one of them
        cli.commands[args[0]].make_context(args[0], list(args[1:]))


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
        assert "DFS_MGMT=10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000" in text
        # the user exists before the cluster file is given to its group
        assert text.index("useradd") < text.index("chown root:dfs")


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
    assert [p for p, _ in client] == ["install", "install", "mount", "mount"]
    text = "\n".join(line for _, line in client)
    assert "cluster.toml" not in text and "useradd" not in text
    assert "/etc/dfs/mount.env" in text and "dfs-mount@mnt-dfs.service" in text
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


def test_bootstrap_refuses_bad_cluster_files(tmp_path):
    def weak(d):
        d["raft_password"] = "short"

    r = subprocess.run([sys.executable, "-m", "cluster.bootstrap", _write_cluster(tmp_path, weak), "--dry-run"],
                       capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert r.returncode != 0 and "raft_password" in r.stderr


def test_real_run_sends_exactly_the_printed_commands(tmp_path):
    """Not a dry run: `--ssh` is a recorder that keeps each call's arguments
    and stdin and runs nothing, so the runner is exercised without a network."""
    rec = tmp_path / "fake-ssh"
    calls = tmp_path / "calls"
    calls.mkdir()
    rec.write_text("#!/bin/sh\nn=$(( $(ls " + str(calls) + " | wc -l) / 2 ))\n"
                   f"printf '%s\\n' \"$@\" > {calls}/$n.args\ncat > {calls}/$n.stdin\n")
    rec.chmod(0o755)
    args = [EXAMPLE, "--ssh", str(rec), "--no-install", "--mount", "/mnt/dfs", "--wait-timeout", "0"]
    r = subprocess.run([sys.executable, "-m", "cluster.bootstrap", *args], capture_output=True, text=True,
                       cwd=REPO, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    steps = _steps(r.stdout)
    got = []
    for i in range(len(steps)):
        target, remote = (calls / f"{i}.args").read_text().splitlines()[:2]
        got.append((target, remote, (calls / f"{i}.stdin").read_bytes()))
    assert len(got) == len(steps) == len(os.listdir(calls)) // 2
    for (phase, host, line), (target, remote, stdin) in zip(steps, got):
        assert (target, remote) == _ssh_target_and_remote(line.replace(str(rec), "ssh"))
        if "cluster.toml.new" in remote:
            assert stdin == _read(EXAMPLE, "rb")
        if "mount.env.new" in remote:
            assert stdin == b"DFS_MGMT=10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000\n"


# --- Kubernetes --------------------------------------------------------------------

@pytest.fixture(scope="module")
def docs() -> list[dict]:
    with open(K8S_EXAMPLE) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _by(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_checked_in_manifests_are_a_fresh_render(cfg):
    fresh = render_k8s.dump(render_k8s.render(cfg, render_k8s.Options()), "example-cluster.toml")
    assert _read(K8S_EXAMPLE) == fresh, "run: python cluster/render_k8s.py " \
        "cluster/example-cluster.toml -o cluster/k8s/example.yaml"


def test_renderer_cli_writes_the_same(tmp_path):
    out = tmp_path / "x.yaml"
    subprocess.run([sys.executable, os.path.join(REPO, "cluster", "render_k8s.py"), EXAMPLE, "-o", str(out)],
                   check=True, timeout=60)
    assert out.read_text() == _read(K8S_EXAMPLE)


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
    secret = _by(docs, "Secret")["dfs-raft"]["stringData"]["raft_password"]
    d = tomllib.loads(cm)
    assert "raft_password" not in d and secret == cfg.raft_password
    k = ClusterConfig.from_dict({**d, "raft_password": secret})
    want = plan.roles(cfg)
    got = plan.roles(k)
    assert [(r.kind, r.ids, r.targets) for r in got] == [(r.kind, r.ids, r.targets) for r in want]
    assert [tuple(map(plan.port_of, r.listen)) for r in got] == [tuple(map(plan.port_of, r.listen)) for r in want]
    svc = _by(docs, "Service")
    for r in got:
        group = "dfs-mgmt" if r.kind == "mgmt" else "dfs-data" if r.kind == "data" else f"dfs-meta-{r.ids[0]}"
        assert r.host == f"{group}-{r.ids[-1]}.{group}.dfs.svc.cluster.local" and group in svc
        assert all(plan.host_of(a) == r.host for a in r.listen)


def test_container_script_assembles_the_cluster_file(tmp_path, docs):
    """Run a pod's shell script with a recording `dfs`: the password from the
    Secret lands in a file the real loader accepts, the ordinal becomes the id."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "run").mkdir()
    cm = _by(docs, "ConfigMap")["dfs-cluster"]["data"]["cluster.toml"]
    (tmp_path / "etc" / "cluster.toml").write_text(cm)
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
        envs = {e["name"] for e in c["env"]}
        assert {"DFS_POD_NAME", "DFS_RAFT_PASSWORD"} <= envs
        script = c["command"][2].replace("/etc/dfs", str(tmp_path / "etc")).replace("/run/dfs", str(tmp_path / "run"))
        env = {"PATH": f"{bin_}:/usr/bin:/bin", "DFS_POD_NAME": pod, "DFS_RAFT_PASSWORD": "0123456789abcdef-pw"}
        r = subprocess.run(c["command"][:2] + [script], env=env, capture_output=True, text=True, check=True)
        argv = json.loads(r.stdout)
        conf = str(tmp_path / "run" / "cluster.toml")
        assert argv == [want[0], "--config", conf, *want[1:]]
        loaded = ClusterConfig.load(conf)
        assert loaded.raft_password == "0123456789abcdef-pw"
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
    mgmt = ",".join(f"dfs-mgmt-{m.id}.dfs-mgmt.dfs.svc.cluster.local:{plan.port_of(m.address)}" for m in cfg.mgmt)
    assert script.endswith(f"exec dfs mount /mnt/dfs --foreground --mgmt {mgmt}")
    assert "DFS_RAFT_PASSWORD" not in json.dumps(ds)  # clients never see the Raft password


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
