"""Install and start a dfs cluster on many machines from one cluster file.

    python cluster/bootstrap.py /etc/dfs/cluster.toml --mount /mnt/dfs --dry-run
    python -m cluster.bootstrap cluster.toml --user root --ssh "ssh -o BatchMode=yes"

Every step is one shell command line run on this machine, nearly all of them
an ssh to one host; `--dry-run` prints exactly those lines and runs nothing.
Steps, in order (docs/design/deployment.md says why):

1. install, host by host: ship the source (`git archive REF`) to PREFIX and
   run `scripts/bootstrap.sh` there (apt packages, .venv, dfs); server hosts
   get a `dfs` system user, /etc/dfs/cluster.toml (0640 root:dfs) and their
   target directories; every host gets the systemd units of the shipped
   source and, where a mount is wanted, /etc/dfs/mount.env;
2. mgmt, then meta, then data: `systemctl enable --now` of the host's
   instances, then a wait until each listens on its address;
3. mounts: `dfs-mount@<escaped path>` on every server host and `--client`.

Running it again converges to the same state: files are rewritten in place,
`bootstrap.sh` skips what is done, `enable --now` leaves running units alone.
It never stops or removes an instance (dropping a Raft replica is a
membership change, not a deployment step) and never restarts one.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass

import click

if __package__ in (None, ""):  # run as a file: python cluster/bootstrap.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.plan import PHASES, Role, hosts, mgmt_addresses, roles, split_hostport
from dfs.common.config import ClusterConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PREFIX = "/opt/dfs"  # what the unit files in cluster/systemd/ name
UNIT_FILES = ("dfs.target", "dfs-mgmt@.service", "dfs-meta@.service", "dfs-data@.service", "dfs-mount@.service")
ETC = "/etc/dfs"


@dataclass(frozen=True, slots=True)
class Step:
    phase: str  # "install" or one of PHASES
    host: str
    what: str
    line: str  # the shell command line run on this machine


def escape_path(path: str) -> str:
    """`systemd-escape --path PATH`: the instance name of a mount unit."""
    if not path.startswith("/") or any(c in ("..", ".") for c in path.split("/")):
        raise ValueError(f"mount point must be an absolute normalised path, not {path!r}")
    p = "/".join(c for c in path.split("/") if c)
    if not p:
        return "-"
    out = []
    for i, ch in enumerate(p):
        if ch == "/":
            out.append("-")
        elif ch.isascii() and (ch.isalnum() or ch in ":_.") and not (ch == "." and i == 0):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return "".join(out)


def mount_unit(path: str) -> str:
    return f"dfs-mount@{escape_path(path)}.service"


def render_unit(text: str, prefix: str) -> str:
    """A unit file for an install under PREFIX instead of /opt/dfs."""
    return text if prefix == DEFAULT_PREFIX else text.replace(DEFAULT_PREFIX + "/", prefix.rstrip("/") + "/")


class Planner:
    def __init__(self, cfg_path: str, *, ssh: str = "ssh", user: str | None = None, sudo: bool = False,
                 prefix: str = DEFAULT_PREFIX, source: str = REPO, ref: str = "HEAD",
                 mounts: tuple[str, ...] = (), clients: tuple[str, ...] = (), mount_opts: str = "",
                 install: bool = True, wait_timeout: int = 120) -> None:
        self.cfg_path = os.path.abspath(cfg_path)
        self.cfg = ClusterConfig.load(cfg_path)
        if len(self.cfg.raft_password) < 16:
            raise ValueError("raft_password must be at least 16 characters: it is all that keeps "
                             "strangers off the Raft ports")
        if not prefix.startswith("/"):
            raise ValueError(f"--prefix must be absolute, not {prefix!r}")
        if clients and not mounts:
            raise ValueError("--client hosts only run mounts: give --mount PATH")
        self.roles = roles(self.cfg)
        self.ssh_prefix, self.user, self.sudo = ssh, user, sudo
        self.prefix, self.source, self.ref = prefix.rstrip("/") or "/", os.path.abspath(source), ref
        self.mounts = tuple(mounts)
        for m in self.mounts:
            escape_path(m)  # refuses what systemd could not name
        self.clients = tuple(h for h in dict.fromkeys(clients) if h not in hosts(self.roles))
        self.mount_opts, self.install, self.wait_timeout = mount_opts, install, wait_timeout

    # -- what runs where -------------------------------------------------------
    def server_hosts(self) -> list[str]:
        return hosts(self.roles)

    def all_hosts(self) -> list[str]:
        return self.server_hosts() + list(self.clients)

    def roles_on(self, host: str, kind: str | None = None) -> list[Role]:
        return [r for r in self.roles if r.host == host and (kind is None or r.kind == kind)]

    def summary(self, host: str) -> str:
        parts = []
        for kind in ("mgmt", "meta", "data"):
            rs = self.roles_on(host, kind)
            if rs:
                parts.append(f"{kind} " + " ".join(r.instance for r in rs))
        if self.mounts:
            parts.append("mount " + " ".join(self.mounts))
        return "; ".join(parts)

    # -- command lines ---------------------------------------------------------
    def target(self, host: str) -> str:
        return f"{self.user}@{host}" if self.user else host

    def ssh(self, host: str, remote: str) -> str:
        if self.sudo:
            remote = "sudo -n sh -c " + shlex.quote(remote)
        return f"{self.ssh_prefix} {shlex.quote(self.target(host))} {shlex.quote(remote)}"

    def write_file(self, path: str, mode: str, group: str = "root") -> str:
        """A remote command that replaces PATH atomically with its stdin."""
        tmp = path + ".new"
        return (f"install -d -m 0755 {shlex.quote(os.path.dirname(path))} && cat > {shlex.quote(tmp)} && "
                f"chown root:{group} {shlex.quote(tmp)} && chmod {mode} {shlex.quote(tmp)} && "
                f"mv -f {shlex.quote(tmp)} {shlex.quote(path)}")

    def wait_listening(self, addr: str) -> str:
        h, p = split_hostport(addr)
        probe = f"until (exec 3<>/dev/tcp/{h}/{p}) 2>/dev/null; do sleep 1; done"
        return f"timeout {self.wait_timeout} bash -c {shlex.quote(probe)}"

    def steps(self) -> list[Step]:
        out: list[Step] = []
        pre = shlex.quote(self.prefix)
        servers = self.server_hosts()
        for h in self.all_hosts():
            def add(what: str, line: str, h: str = h) -> None:
                out.append(Step("install", h, what, line))

            if self.install:
                add(f"ship dfs {self.ref} to {self.prefix}",
                    f"git -C {shlex.quote(self.source)} archive --format=tar {shlex.quote(self.ref)} | "
                    + self.ssh(h, f"install -d -m 0755 {pre} && tar -x --no-same-owner -C {pre}"))
                add("system packages, virtualenv and dfs (scripts/bootstrap.sh)",
                    self.ssh(h, f"bash {shlex.quote(self.prefix + '/scripts/bootstrap.sh')}"))
            if h in servers:
                add("the dfs system user",
                    self.ssh(h, "getent passwd dfs >/dev/null || useradd --system --user-group "
                                "--home-dir /var/lib/dfs --no-create-home --shell /usr/sbin/nologin dfs"))
                add(f"the cluster file {ETC}/cluster.toml",
                    self.ssh(h, self.write_file(f"{ETC}/cluster.toml", "0640", "dfs"))
                    + f" < {shlex.quote(self.cfg_path)}")
                dirs = [p for r in self.roles_on(h, "data") for p in r.targets]
                if dirs:
                    add("data target directories",
                        self.ssh(h, "install -d -o dfs -g dfs -m 0750 " + " ".join(shlex.quote(d) for d in dirs)))
            units = " ".join(shlex.quote(f"{self.prefix}/cluster/systemd/{u}") for u in UNIT_FILES)
            remote = f"install -m 0644 {units} /etc/systemd/system/"
            if self.prefix != DEFAULT_PREFIX:
                installed = " ".join(shlex.quote(f"/etc/systemd/system/{u}") for u in UNIT_FILES)
                remote += f" && sed -i {shlex.quote(f's#{DEFAULT_PREFIX}/#{self.prefix}/#g')} {installed}"
            add("systemd units", self.ssh(h, remote + " && systemctl daemon-reload && systemctl enable dfs.target"))
            if self.mounts:
                env = "DFS_MGMT=" + ",".join(mgmt_addresses(self.cfg))
                body = [env] + ([f"DFS_MOUNT_OPTS={self.mount_opts}"] if self.mount_opts else [])
                add(f"mount settings {ETC}/mount.env",
                    "printf '%s\\n' " + " ".join(shlex.quote(b) for b in body) + " | "
                    + self.ssh(h, self.write_file(f"{ETC}/mount.env", "0644")))

        for kind in PHASES[:3]:
            for h in servers:
                rs = self.roles_on(h, kind)
                if not rs:
                    continue
                out.append(Step(kind, h, f"start {kind} " + " ".join(r.instance for r in rs),
                                self.ssh(h, "systemctl enable --now " + " ".join(r.unit for r in rs))))
                if self.wait_timeout:
                    for r in rs:
                        out.append(Step(kind, h, f"wait until {kind} {r.instance} listens on {r.address}",
                                        self.ssh(h, self.wait_listening(r.address))))
        if self.mounts:
            for h in self.all_hosts():
                out.append(Step("mount", h, "mount " + " ".join(self.mounts),
                                self.ssh(h, "systemctl enable --now " + " ".join(mount_unit(m) for m in self.mounts))))
                if self.wait_timeout:
                    for m in self.mounts:
                        probe = f"until mountpoint -q {shlex.quote(m)}; do sleep 1; done"
                        out.append(Step("mount", h, f"wait until {m} is mounted",
                                        self.ssh(h, f"timeout {self.wait_timeout} bash -c {shlex.quote(probe)}")))
        return out

    def header(self) -> list[str]:
        lines = [f"# dfs cluster {self.cfg.cluster_id} from {self.cfg_path}"]
        lines += [f"# host {h}: {self.summary(h)}" for h in self.all_hosts()]
        return lines


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("cluster_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="print the command lines, run nothing")
@click.option("--ssh", "ssh_cmd", default="ssh", show_default=True,
              help="command prefix that runs a command on a host (e.g. 'ssh -o BatchMode=yes')")
@click.option("--user", default=None, help="log in as USER (default: your ssh config's)")
@click.option("--sudo", is_flag=True, help="run remote commands through sudo -n (when USER is not root)")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="where dfs is installed on the hosts")
@click.option("--source", default=REPO, show_default=True, type=click.Path(file_okay=False),
              help="git checkout to ship")
@click.option("--ref", default="HEAD", show_default=True, help="git revision to ship")
@click.option("--no-install", is_flag=True, help="skip shipping the source and scripts/bootstrap.sh")
@click.option("--mount", "mounts", multiple=True, help="mount dfs at this path on every host (repeatable)")
@click.option("--client", "clients", multiple=True, help="an extra host that only mounts (repeatable)")
@click.option("--mount-opts", default="", help="extra `dfs mount` flags, e.g. '--writeback-cache'")
@click.option("--wait-timeout", default=120, show_default=True, type=click.IntRange(0),
              help="seconds to wait for each server to listen (0: do not wait)")
def main(cluster_file: str, dry_run: bool, ssh_cmd: str, user: str | None, sudo: bool, prefix: str, source: str,
         ref: str, no_install: bool, mounts: tuple[str, ...], clients: tuple[str, ...], mount_opts: str,
         wait_timeout: int) -> None:
    """Install dfs on the hosts of CLUSTER_FILE and start its roles in order."""
    try:
        p = Planner(cluster_file, ssh=ssh_cmd, user=user, sudo=sudo, prefix=prefix, source=source, ref=ref,
                    mounts=mounts, clients=clients, mount_opts=mount_opts, install=not no_install,
                    wait_timeout=wait_timeout)
    except (ValueError, KeyError) as e:
        raise click.ClickException(f"{cluster_file}: {e}") from None
    if p.install and not dry_run and not os.path.exists(os.path.join(p.source, ".git")):
        raise click.ClickException(f"{p.source} is not a git checkout (give --source or --no-install)")
    for line in p.header():
        click.echo(line)
    for s in p.steps():
        click.echo(f"# [{s.phase}] {s.host}: {s.what}")
        click.echo(s.line)
        if dry_run:
            continue
        r = subprocess.run(["bash", "-o", "pipefail", "-c", s.line], stdin=subprocess.DEVNULL, check=False)
        if r.returncode != 0:
            raise click.ClickException(f"[{s.phase}] {s.host}: {s.what}: exit {r.returncode}; "
                                       "fix it and run again (every step is safe to repeat)")


if __name__ == "__main__":
    main()
