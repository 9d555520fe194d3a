"""Install and start a dfs cluster on many machines from one cluster file.

    python cluster/bootstrap.py /etc/dfs/cluster.toml --mount /mnt/dfs --dry-run
    python -m cluster.bootstrap cluster.toml --user root --ssh "ssh -o BatchMode=yes"

Every step is one shell command line run on this machine, nearly all of them
an ssh to one host; `--dry-run` prints exactly those lines and runs nothing.
Steps, in order (docs/design/deployment.md says why):

1. install, host by host: ship the source (`git archive REF`) to PREFIX and
   run `scripts/bootstrap.sh` there (apt packages, .venv, dfs); server hosts
   get a `dfs` system user, /etc/dfs/cluster.toml (0640 root:dfs) and their
   target directories; every host gets the client token as
   /etc/dfs/client.token (0600; owned by dfs where servers run), the [tls]
   files, /etc/dfs/client.toml (mgmt addresses, the token's path, the CA),
   the systemd units of the shipped source and, where a mount is wanted,
   /etc/dfs/mount.env;
2. mgmt, then meta, then data: `systemctl enable --now` of the host's
   instances, then a wait until each listens on its address;
3. mounts: `dfs-mount@<escaped path>` on every server host and `--client`.

Running it again converges to the same state: files are rewritten in place,
`bootstrap.sh` skips what is done, `enable --now` leaves running units alone.
It never stops or removes an instance (dropping a Raft replica is a
membership change, not a deployment step) and never restarts one.

Secrets never appear on a printed line: the token, the cluster file and
the TLS files reach a host as the stdin of its ssh (`< FILE`), so a dry run
can be pasted into a ticket. The cluster file must name a client token
(`client_token` or `client_token_file`); `--generate-token` makes one
(`secrets.token_urlsafe`) into `client.token` next to the cluster file and
names it there, so the file stays the one description of the cluster.

The Raft password must pass the loader's rules (16 bytes or more, not a
placeholder such as the example file's: ``dfs.common.config``), and the file
must carry a ``raft_salt``; `--generate-salt` adds one (``secrets.token_hex``)
to a file without. A salt changes every key derived from the password: the
servers of a running cluster must all be restarted once it is added (the
bootstrap never restarts anything; it says so).
"""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass

import click
import tomli_w

if __package__ in (None, ""):  # run as a file: python cluster/bootstrap.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.plan import PHASES, Role, hosts, mgmt_addresses, roles, split_hostport
from dfs.common.config import ClusterConfig, check_raft_password, new_raft_salt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PREFIX = "/opt/dfs"  # what the unit files in cluster/systemd/ name
UNIT_FILES = ("dfs.target", "dfs-mgmt@.service", "dfs-meta@.service", "dfs-data@.service", "dfs-mount@.service")
ETC = "/etc/dfs"
TOKEN = f"{ETC}/client.token"  # the client token on every host (0600)
CLIENT_FILE = f"{ETC}/client.toml"  # what a mount or the CLI reads: addresses, the token's path, the CA
GENERATED_TOKEN = "client.token"  # --generate-token writes it next to the cluster file
# The cluster file as a server host gets it: any client_token or
# client_token_file line gives way to the host's token file. A top-level key
# must come before the first table, hence first. (The file's own lines are
# kept, comments included; client_token* are top-level keys only.)
HOST_CLUSTER_FILTER = (f"{{ printf '%s\\n' 'client_token_file = \"{TOKEN}\"'; "
                       "sed -E '/^[[:space:]]*client_token(_file)?[[:space:]]*=/d'; }")


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


def _generate_token(cfg_path: str) -> str:
    """--generate-token: a new client token in `client.token` next to the cluster
    file (0600), named there as `client_token_file`. A `client.token` already there
    (a run that stopped half way) is kept: it may already be on some hosts.
    Returns the token file's path."""
    cfg_path = os.path.abspath(cfg_path)
    path = os.path.join(os.path.dirname(cfg_path), GENERATED_TOKEN)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    with open(cfg_path) as f:
        lines = f.read().splitlines(keepends=True)
    # a top-level key goes before the first table; the file's comments stay
    first = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("[")), len(lines))
    lines[first:first] = ["# written by cluster/bootstrap.py --generate-token\n",
                          f'client_token_file = "{GENERATED_TOKEN}"\n', "\n"]
    tmp = cfg_path + ".new"
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.chmod(tmp, os.stat(cfg_path).st_mode & 0o7777)
    os.replace(tmp, cfg_path)
    ClusterConfig.load(cfg_path).auth_token  # noqa: B018 - the edited file loads and its token reads
    return path


def _generate_salt(cfg_path: str) -> str:
    """--generate-salt: a ``raft_salt`` line added to the cluster file (before its first
    table, its comments kept). Returns the salt."""
    cfg_path = os.path.abspath(cfg_path)
    salt = new_raft_salt()
    with open(cfg_path) as f:
        lines = f.read().splitlines(keepends=True)
    first = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("[")), len(lines))
    lines[first:first] = ["# written by cluster/bootstrap.py --generate-salt\n", f'raft_salt = "{salt}"\n', "\n"]
    tmp = cfg_path + ".new"
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.chmod(tmp, os.stat(cfg_path).st_mode & 0o7777)
    os.replace(tmp, cfg_path)
    if ClusterConfig.load(cfg_path).raft_salt != salt:
        raise ValueError(f"{cfg_path}: the salt written is not the one the file gives")
    return salt


def host_path(p: str) -> str:
    """Where a file the cluster file names lives on a host: a relative path is
    taken from /etc/dfs (where the cluster file is), as the loader does."""
    if p.startswith("~"):
        raise ValueError(f"{p!r}: a path with ~ means another place on every host; give it from /etc/dfs or /")
    return os.path.normpath(os.path.join(ETC, p))


class Planner:
    def __init__(self, cfg_path: str, *, ssh: str = "ssh", user: str | None = None, sudo: bool = False,
                 prefix: str = DEFAULT_PREFIX, source: str = REPO, ref: str = "HEAD",
                 mounts: tuple[str, ...] = (), clients: tuple[str, ...] = (), mount_opts: str = "",
                 install: bool = True, wait_timeout: int = 120, generate_token: bool = False,
                 generate_salt: bool = False) -> None:
        self.cfg_path = os.path.abspath(cfg_path)
        self.cfg = ClusterConfig.load(cfg_path)  # refuses an empty, short or placeholder raft_password
        check_raft_password(self.cfg.raft_password)
        self.generates_salt = False
        if self.cfg.raft_salt is None:
            if not generate_salt:
                raise ValueError("no raft_salt: add raft_salt = \"<python -c 'import secrets; "
                                 "print(secrets.token_hex(16))'>\" to the cluster file, or give --generate-salt "
                                 "(a running cluster's servers must then all be restarted: the Raft keys change)")
            self.generates_salt = True
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
        # where this machine reads the client token from (never printed, only redirected)
        self.generates = False
        if self.cfg.client_token_file is not None:
            self.token_file: str | None = self.cfg.client_token_file
            self.cfg.auth_token  # noqa: B018 - fail here, not half way through the hosts
        elif self.cfg.client_token is not None:
            self.token_file = None  # inline: extracted from the cluster file on the way to ssh
        elif generate_token:
            self.generates = True
            self.token_file = os.path.join(os.path.dirname(self.cfg_path), GENERATED_TOKEN)
        else:
            raise ValueError("no client token (client_token or client_token_file): without one anyone who "
                             "reaches a port is a client. Add client_token_file = \"client.token\" with "
                             "python -c 'import secrets; print(secrets.token_urlsafe(32))' > client.token "
                             "(mode 0600), or give --generate-token")
        with open(self.cfg_path, "rb") as f:
            tls = tomllib.load(f).get("tls", {})
        # [tls] file -> (where this machine has it, where hosts get it); same relative path under /etc/dfs
        self.tls_files = {k: (getattr(self.cfg.tls, k), host_path(tls[k]))
                          for k in ("ca", "cert", "key") if self.cfg.tls is not None and k in tls}

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

    def write_file(self, path: str, mode: str, owner: str = "root", group: str = "root", filter: str = "cat") -> str:
        """A remote command that replaces PATH atomically with its stdin (through
        FILTER). umask 077 once the folder exists: the new file is private before
        chmod sets its mode."""
        tmp = path + ".new"
        return (f"install -d -m 0755 {shlex.quote(os.path.dirname(path))} && umask 077 && "
                f"{filter} > {shlex.quote(tmp)} && chown {owner}:{group} {shlex.quote(tmp)} && "
                f"chmod {mode} {shlex.quote(tmp)} && mv -f {shlex.quote(tmp)} {shlex.quote(path)}")

    def ship_token(self, host: str, owner: str) -> str:
        """Write the token file on HOST from this machine's token file, or from the
        cluster file's inline client_token: never from the command line."""
        remote = self.ssh(host, self.write_file(TOKEN, "0600", owner, owner))
        if self.token_file is not None:
            return f"{remote} < {shlex.quote(self.token_file)}"
        read = 'import sys, tomllib; sys.stdout.write(tomllib.load(sys.stdin.buffer)["client_token"])'
        return f"{shlex.quote(sys.executable)} -c {shlex.quote(read)} < {shlex.quote(self.cfg_path)} | {remote}"

    def client_file(self) -> str:
        """/etc/dfs/client.toml: what a mount (or the CLI) on a host needs; no secret."""
        d: dict = {"cluster_id": self.cfg.cluster_id, "client_token_file": TOKEN,
                   "mgmt": [{"address": a} for a in mgmt_addresses(self.cfg)]}
        if self.cfg.tls is not None:
            d["tls"] = {"ca": self.tls_files["ca"][1]}
            if self.cfg.tls.server_name is not None:
                d["tls"]["server_name"] = self.cfg.tls.server_name
        return tomli_w.dumps(d)

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
            server = h in servers
            # servers run as dfs and read the token and the key; a mount runs as root
            owner = "dfs" if server else "root"
            if server:
                add("the dfs system user",
                    self.ssh(h, "getent passwd dfs >/dev/null || useradd --system --user-group "
                                "--home-dir /var/lib/dfs --no-create-home --shell /usr/sbin/nologin dfs"))
                add(f"the cluster file {ETC}/cluster.toml, naming {TOKEN}",
                    self.ssh(h, self.write_file(f"{ETC}/cluster.toml", "0640", "root", "dfs", HOST_CLUSTER_FILTER))
                    + f" < {shlex.quote(self.cfg_path)}")
            add(f"the client token {TOKEN} (0600, {owner})", self.ship_token(h, owner))
            for k, (local, remote) in self.tls_files.items():
                if k == "ca" or server:
                    private = k == "key"
                    add(f"TLS {k} {remote}",
                        self.ssh(h, self.write_file(remote, "0600" if private else "0644",
                                                    owner if private else "root", owner if private else "root"))
                        + f" < {shlex.quote(local)}")
            if server:
                dirs = [p for r in self.roles_on(h, "data") for p in r.targets]
                if dirs:
                    add("data target directories",
                        self.ssh(h, "install -d -o dfs -g dfs -m 0750 " + " ".join(shlex.quote(d) for d in dirs)))
            add(f"the client file {CLIENT_FILE} (addresses, token path, CA)",
                "printf '%s\\n' " + " ".join(shlex.quote(ln) for ln in self.client_file().splitlines()) + " | "
                + self.ssh(h, self.write_file(CLIENT_FILE, "0644")))
            units = " ".join(shlex.quote(f"{self.prefix}/cluster/systemd/{u}") for u in UNIT_FILES)
            remote = f"install -m 0644 {units} /etc/systemd/system/"
            if self.prefix != DEFAULT_PREFIX:
                installed = " ".join(shlex.quote(f"/etc/systemd/system/{u}") for u in UNIT_FILES)
                remote += f" && sed -i {shlex.quote(f's#{DEFAULT_PREFIX}/#{self.prefix}/#g')} {installed}"
            add("systemd units", self.ssh(h, remote + " && systemctl daemon-reload && systemctl enable dfs.target"))
            if self.mounts:
                add(f"mount options {ETC}/mount.env",
                    "printf '%s\\n' " + shlex.quote(f"DFS_MOUNT_OPTS={self.mount_opts}") + " | "
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
        if self.generates_salt:
            lines.append("# raft salt: none in the cluster file; --generate-salt adds one (running servers must "
                         "all be restarted after: the Raft keys change)")
        if self.generates:
            lines.append(f"# client token: none in the cluster file; --generate-token makes one into "
                         f"{self.token_file} (0600) and names it there")
        elif self.token_file is not None:
            lines.append(f"# client token: {self.token_file} (client_token_file)")
        else:
            lines.append("# client token: client_token in the cluster file")
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
@click.option("--generate-token", is_flag=True,
              help="if the cluster file has no client token: make one (secrets.token_urlsafe) into client.token "
                   "next to it, mode 0600, and name it in the file (client_token_file)")
@click.option("--generate-salt", is_flag=True,
              help="if the cluster file has no raft_salt: add one (secrets.token_hex) to it; the servers of a "
                   "running cluster must then all be restarted")
def main(cluster_file: str, dry_run: bool, ssh_cmd: str, user: str | None, sudo: bool, prefix: str, source: str,
         ref: str, no_install: bool, mounts: tuple[str, ...], clients: tuple[str, ...], mount_opts: str,
         wait_timeout: int, generate_token: bool, generate_salt: bool) -> None:
    """Install dfs on the hosts of CLUSTER_FILE and start its roles in order."""
    def plan() -> Planner:
        return Planner(cluster_file, ssh=ssh_cmd, user=user, sudo=sudo, prefix=prefix, source=source, ref=ref,
                       mounts=mounts, clients=clients, mount_opts=mount_opts, install=not no_install,
                       wait_timeout=wait_timeout, generate_token=generate_token, generate_salt=generate_salt)

    try:
        p = plan()
        if p.generates_salt and not dry_run:
            _generate_salt(cluster_file)
            click.echo(f"# added a raft_salt to {p.cfg_path}: restart every server of a running cluster")
            p = plan()
        if p.generates and not dry_run:
            click.echo(f"# generated a client token into {_generate_token(cluster_file)}, "
                       f"named in {p.cfg_path}")
            p = plan()
    except (ValueError, KeyError, OSError) as e:
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
