"""Kubernetes manifests for a dfs cluster, rendered from its cluster file.

    python cluster/render_k8s.py cluster/example-cluster.toml -o cluster/k8s/example.yaml
    kubectl apply -f cluster/k8s/example.yaml

The cluster file says how many replicas of what exist and on which ports;
this renderer keeps both and replaces each host with the stable DNS name of
the pod that plays the role, so the manifests and the cluster file they
carry cannot disagree:

- mgmt: StatefulSet `dfs-mgmt`, pod ordinal = mgmt replica id;
- meta: one StatefulSet `dfs-meta-S` per shard, ordinal = replica id (a
  shard is one Raft group: its own rollout, disruption budget and volumes);
- data: StatefulSet `dfs-data`, ordinal = data server id, one volume claim
  per distinct target path;
- each StatefulSet has a headless Service (publishNotReadyAddresses, so Raft
  peers find each other before anything is ready) with every port its
  members listen on;
- `dfs-mount`, a DaemonSet that mounts dfs on every node (privileged,
  /dev/fuse, Bidirectional mount propagation);
- the cluster file goes into a ConfigMap (`cluster.toml`, and `client.toml`
  for the mounts) without a secret in it: the Raft password, the client
  token and the TLS files are in the Secret `dfs-server`, mounted into the
  server pods; the mounts get the Secret `dfs-client` (the token and the
  CA, never the Raft password or a server key); the files name the token
  and TLS files by their path in the mounted Secret;
- a NetworkPolicy admits only mgmt and meta pods to the Raft ports.

Role ids must therefore be 0..n-1 in order within each group. The renderer
only reads the cluster file and prints YAML.

The cluster file must pass the loader's rules: a Raft password of 16 bytes
or more that is not a placeholder, and a ``raft_salt`` (it goes into the
ConfigMap: it is not a secret, only unique to the cluster). ``--example``
renders a documentation example whose secrets are still placeholders (the
shipped cluster/k8s/example.yaml): its servers refuse to start until the
Secret and the salt are replaced.
"""

from __future__ import annotations

import os
import secrets
import sys

import click
import tomli_w
import yaml

if __package__ in (None, ""):  # run as a file: python cluster/render_k8s.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.plan import Role, port_of, roles
from dfs.common.config import ClusterConfig, example_secrets

NAME = "app.kubernetes.io/name"
COMPONENT = "app.kubernetes.io/component"
RAFT_PEER = "dfs.io/raft-peer"
SHARD = "dfs.io/shard"
UID = 10001  # the dfs user of cluster/Dockerfile
CONFIG_DIR = "/etc/dfs"  # the ConfigMap (no secret)
SECRET_DIR = "/run/secrets/dfs"  # the Secret: dfs-server in server pods, dfs-client in the mounts
RUN_DIR = "/run/dfs"  # the complete cluster file, assembled at container start
STATE = "/var/lib/dfs"
SERVER_SECRET, CLIENT_SECRET = "dfs-server", "dfs-client"
TOKEN_KEY, PASSWORD_KEY = "client.token", "raft_password"
TLS_KEYS = {"ca": "ca.pem", "cert": "server.pem", "key": "server.key"}  # [tls] field -> Secret key


class Options:
    def __init__(self, namespace: str = "dfs", image: str = "dfs:latest", domain: str = "cluster.local",
                 mount_path: str = "/mnt/dfs", storage_class: str | None = None, mgmt_storage: str = "1Gi",
                 meta_storage: str = "20Gi", target_storage: str = "100Gi", generate_token: bool = False) -> None:
        self.namespace, self.image, self.domain, self.mount_path = namespace, image, domain, mount_path
        self.generate_token = generate_token  # a cluster file without a client token gets a fresh one
        self.storage_class = storage_class
        self.mgmt_storage, self.meta_storage, self.target_storage = mgmt_storage, meta_storage, target_storage


def _group_name(r: Role) -> str:
    return f"dfs-meta-{r.ids[0]}" if r.kind == "meta" else f"dfs-{r.kind}"


def _ordinal(r: Role) -> int:
    return r.ids[-1]


def groups(cfg: ClusterConfig) -> dict[str, list[Role]]:
    """StatefulSet name -> its roles by ordinal."""
    out: dict[str, list[Role]] = {}
    for r in roles(cfg):
        out.setdefault(_group_name(r), []).append(r)
    for name, rs in out.items():
        ids = [_ordinal(r) for r in rs]
        if ids != list(range(len(rs))):
            raise ValueError(f"{name}: ids must be 0..{len(rs) - 1} in order to be StatefulSet ordinals, not {ids}")
    return out


def pod_host(group: str, ordinal: int, o: Options) -> str:
    return f"{group}-{ordinal}.{group}.{o.namespace}.svc.{o.domain}"


def k8s_cluster_dict(cfg: ClusterConfig, o: Options) -> dict:
    """The cluster file as the pods see it: hosts are pod DNS names, ports kept,
    no secret: raft_password left out (the container adds it from the Secret),
    the token and [tls] files named by their path in the mounted Secret."""
    d = cfg.to_dict()
    if cfg.raft_password:
        del d["raft_password"]
    d.pop("client_token", None)
    d["client_token_file"] = f"{SECRET_DIR}/{TOKEN_KEY}"
    if cfg.tls is not None:
        d["tls"] = _tls_paths(cfg, ("ca", "cert", "key"))

    def rehost(addr: str, group: str, ordinal: int) -> str:
        return f"{pod_host(group, ordinal, o)}:{port_of(addr)}"

    for m in d["mgmt"]:
        m["address"], m["raft"] = rehost(m["address"], "dfs-mgmt", m["id"]), rehost(m["raft"], "dfs-mgmt", m["id"])
    for s in d["shards"]:
        g = f"dfs-meta-{s['id']}"
        for r in s["replicas"]:
            r["address"], r["raft"] = rehost(r["address"], g, r["id"]), rehost(r["raft"], g, r["id"])
    for x in d.get("data", []):
        x["address"] = rehost(x["address"], "dfs-data", x["id"])
    return d


def _tls_paths(cfg: ClusterConfig, fields: tuple[str, ...]) -> dict:
    t = {k: f"{SECRET_DIR}/{TLS_KEYS[k]}" for k in fields}
    if cfg.tls.server_name is not None:
        t["server_name"] = cfg.tls.server_name
    return t


def k8s_client_dict(cfg: ClusterConfig, o: Options) -> dict:
    """What the mounts read (`dfs mount --cluster`): mgmt pod addresses, the token's
    path and the CA; nothing that lets one act as a server."""
    d: dict = {"cluster_id": cfg.cluster_id, "client_token_file": f"{SECRET_DIR}/{TOKEN_KEY}",
               "mgmt": [{"address": f"{pod_host('dfs-mgmt', m.id, o)}:{port_of(m.address)}"} for m in cfg.mgmt]}
    if cfg.tls is not None:
        d["tls"] = _tls_paths(cfg, ("ca",))
    return d


def _read_text(what: str, path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path}: not a PEM file (ASCII)") from None


def secret_data(cfg: ClusterConfig, o: Options) -> tuple[dict[str, str], dict[str, str]]:
    """(dfs-server's, dfs-client's) Secret contents."""
    token = cfg.auth_token
    if token is None:
        if not o.generate_token:
            raise ValueError("no client token (client_token or client_token_file): add one "
                             "(python -c 'import secrets; print(secrets.token_urlsafe(32))') or give --generate-token")
        token = secrets.token_urlsafe(32)
    server = {TOKEN_KEY: token}
    if cfg.raft_password:
        server[PASSWORD_KEY] = cfg.raft_password
    client = {TOKEN_KEY: token}
    if cfg.tls is not None:
        if cfg.tls.cert is None:
            raise ValueError("[tls] needs cert and key: the servers listen with them")
        for k, key in TLS_KEYS.items():
            server[key] = _read_text(f"[tls] {k}", getattr(cfg.tls, k))
        client[TLS_KEYS["ca"]] = server[TLS_KEYS["ca"]]
    return server, client


def _secret(name: str, data: dict[str, str], o: Options) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": o.namespace, "labels": {NAME: "dfs"}}, "stringData": data}


def _ports(rs: list[Role]) -> list[dict]:
    """Every port the group's members listen on, named by use."""
    seen: dict[int, str] = {}
    for r in rs:
        seen.setdefault(port_of(r.address), "data" if r.kind == "data" else "grpc")
        if r.raft is not None:
            seen.setdefault(port_of(r.raft), "raft")
    return [{"name": f"{use}-{p}", "port": p} for p, use in sorted(seen.items())]


def _labels(component: str, extra: dict | None = None) -> dict:
    return {NAME: "dfs", COMPONENT: component, **(extra or {})}


def _password_prelude(cfg: ClusterConfig) -> str:
    # The loader wants raft_password in the file; a top-level key must come
    # before the first table, hence printed first. A TOML literal string
    # (single quotes) takes the password as it is; render() refuses ' in it.
    # Read from the mounted Secret, not an environment variable, so that the
    # server's environment (/proc/PID/environ, crash reports) never holds it.
    if not cfg.raft_password:
        return f"umask 077 && cat {CONFIG_DIR}/cluster.toml > {RUN_DIR}/cluster.toml && "
    # (pw is a shell variable, not exported: the server never sees it.)
    return (f"umask 077 && pw=\"$(cat {SECRET_DIR}/{PASSWORD_KEY})\" && "
            f"{{ printf \"raft_password = '%s'\\n\" \"$pw\"; cat {CONFIG_DIR}/cluster.toml; }} > {RUN_DIR}/cluster.toml && ")


def _statefulset(name: str, rs: list[Role], o: Options, script: str, component: str, extra_labels: dict,
                 claims: list[tuple[str, str, str]]) -> dict:
    """claims: (volume name, mount path, size)."""
    labels = _labels(component, {**extra_labels, "dfs.io/group": name})
    mounts = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
              {"name": "secret", "mountPath": SECRET_DIR, "readOnly": True},
              {"name": "run", "mountPath": RUN_DIR}]
    mounts += [{"name": v, "mountPath": p} for v, p, _ in claims]
    spec_claims = []
    for v, _, size in claims:
        cs: dict = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
        if o.storage_class:
            cs["storageClassName"] = o.storage_class
        spec_claims.append({"metadata": {"name": v}, "spec": cs})
    container = {
        "name": component,
        "image": o.image,
        "command": ["/bin/sh", "-c", script],
        "env": [{"name": "DFS_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"name": p["name"], "containerPort": p["port"], "protocol": "TCP"} for p in _ports(rs)],
        "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": o.namespace, "labels": labels},
        "spec": {
            "serviceName": name,
            "replicas": len(rs),
            # Raft needs a majority up to elect a leader: start all at once.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {NAME: "dfs", "dfs.io/group": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {"runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                                        "runAsNonRoot": True},
                    "terminationGracePeriodSeconds": 30,
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                            "labelSelector": {"matchLabels": {"dfs.io/group": name}}},
                    }]}},
                    "containers": [container],
                    "volumes": [{"name": "config", "configMap": {"name": "dfs-cluster",
                                                                  "items": [{"key": "cluster.toml",
                                                                             "path": "cluster.toml"}]}},
                                # 0440 with fsGroup: root:10001, readable by the dfs user only
                                {"name": "secret", "secret": {"secretName": SERVER_SECRET, "defaultMode": 0o440}},
                                {"name": "run", "emptyDir": {"medium": "Memory"}}],
                },
            },
            "volumeClaimTemplates": spec_claims,
        },
    }


def _service(name: str, rs: list[Role], o: Options, component: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": o.namespace, "labels": _labels(component)},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {NAME: "dfs", "dfs.io/group": name},
            "ports": [{"name": p["name"], "port": p["port"], "targetPort": p["port"], "protocol": "TCP"}
                      for p in _ports(rs)],
        },
    }


def _pdb(name: str, n: int, o: Options, component: str) -> dict:
    # a Raft group keeps working while a majority is up; a chain while one
    # copy is, but a resync is cheaper after one loss than two
    spec: dict = {"selector": {"matchLabels": {NAME: "dfs", "dfs.io/group": name}}}
    if component == "data":
        spec["maxUnavailable"] = 1
    else:
        spec["minAvailable"] = n // 2 + 1
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": o.namespace, "labels": _labels(component)}, "spec": spec}


def render(cfg: ClusterConfig, o: Options) -> list[dict]:
    if cfg.raft_salt is None:
        raise ValueError("no raft_salt: add raft_salt = \"<python -c 'import secrets; print(secrets.token_hex(16))'>\" "
                         "to the cluster file (a running cluster's servers all restart with new Raft keys)")
    if "'" in cfg.raft_password or any(ord(c) < 32 for c in cfg.raft_password):
        raise ValueError("raft_password: no quotes or control characters (it goes into a TOML literal string)")
    gs = groups(cfg)
    server, client = secret_data(cfg, o)
    docs: list[dict] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": o.namespace, "labels": {NAME: "dfs"}}},
        _secret(SERVER_SECRET, server, o),
        _secret(CLIENT_SECRET, client, o),
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "dfs-cluster", "namespace": o.namespace, "labels": {NAME: "dfs"}},
         "data": {"cluster.toml": tomli_w.dumps(k8s_cluster_dict(cfg, o)),
                  "client.toml": tomli_w.dumps(k8s_client_dict(cfg, o))}},
    ]
    ordinal = '"${DFS_POD_NAME##*-}"'
    for name, rs in gs.items():
        kind = rs[0].kind
        if kind == "mgmt":
            script = (_password_prelude(cfg) + f"exec dfs mgmt-server --config {RUN_DIR}/cluster.toml "
                      f"--replica {ordinal} --data {STATE}/mgmt")
            claims = [("state", STATE, o.mgmt_storage)]
            extra = {RAFT_PEER: "true"}
        elif kind == "meta":
            shard = rs[0].ids[0]
            script = (_password_prelude(cfg) + f"exec dfs meta-server --config {RUN_DIR}/cluster.toml "
                      f"--shard {shard} --replica {ordinal} --data {STATE}/meta")
            claims = [("state", STATE, o.meta_storage)]
            extra = {RAFT_PEER: "true", SHARD: str(shard)}
        else:
            script = _password_prelude(cfg) + f"exec dfs data-server --config {RUN_DIR}/cluster.toml --server {ordinal}"
            paths = sorted({p for r in rs for p in r.targets})
            claims = [(f"target-{i}", p, o.target_storage) for i, p in enumerate(paths)]
            extra = {}
        docs.append(_service(name, rs, o, kind))
        docs.append(_statefulset(name, rs, o, script, kind, extra, claims))
        docs.append(_pdb(name, len(rs), o, kind))
    docs.append(_network_policy(gs, o))
    docs.append(_mount_daemonset(cfg, o))
    return docs


def _network_policy(gs: dict[str, list[Role]], o: Options) -> dict:
    """Raft ports admit only Raft peers (mgmt and meta pods); gRPC ports anyone.
    Enforced only where the network plugin implements NetworkPolicy."""
    rs = [r for g in gs.values() for r in g if r.raft is not None]
    grpc = sorted({port_of(r.address) for r in rs})
    raft = sorted({port_of(r.raft) for r in rs})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "dfs-raft", "namespace": o.namespace, "labels": {NAME: "dfs"}},
        "spec": {
            "podSelector": {"matchLabels": {NAME: "dfs", RAFT_PEER: "true"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"protocol": "TCP", "port": p} for p in grpc]},
                {"from": [{"podSelector": {"matchLabels": {NAME: "dfs", RAFT_PEER: "true"}}}],
                 "ports": [{"protocol": "TCP", "port": p} for p in raft]},
            ],
        },
    }


def _mount_daemonset(cfg: ClusterConfig, o: Options) -> dict:
    mp = o.mount_path
    # a crashed mount leaves "Transport endpoint is not connected" behind:
    # clear it before mounting again
    script = (f"dfs umount {mp} >/dev/null 2>&1 || true; "
              f"exec dfs mount {mp} --foreground --cluster {CONFIG_DIR}/client.toml")
    labels = _labels("mount")
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "dfs-mount", "namespace": o.namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {NAME: "dfs", COMPONENT: "mount"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "mount",
                        "image": o.image,
                        "command": ["/bin/sh", "-c", script],
                        "securityContext": {"privileged": True},
                        "lifecycle": {"preStop": {"exec": {"command": ["dfs", "umount", mp]}}},
                        "volumeMounts": [
                            {"name": "mnt", "mountPath": mp, "mountPropagation": "Bidirectional"},
                            {"name": "fuse", "mountPath": "/dev/fuse"},
                            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                            {"name": "secret", "mountPath": SECRET_DIR, "readOnly": True},
                        ],
                    }],
                    "volumes": [
                        {"name": "config", "configMap": {"name": "dfs-cluster",
                                                         "items": [{"key": "client.toml", "path": "client.toml"}]}},
                        {"name": "secret", "secret": {"secretName": CLIENT_SECRET, "defaultMode": 0o400}},
                        {"name": "mnt", "hostPath": {"path": mp, "type": "DirectoryOrCreate"}},
                        {"name": "fuse", "hostPath": {"path": "/dev/fuse", "type": "CharDevice"}},
                    ],
                },
            },
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block scalars for multi-line strings (the cluster file stays readable),
    no anchors and aliases (every object spelled out)."""

    def ignore_aliases(self, data) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, s: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


_Dumper.add_representer(str, _str)


def dump(docs: list[dict], source: str, example: bool = False) -> str:
    head = (f"# Rendered by cluster/render_k8s.py from {source}; do not edit, render again.\n"
            "# Apply with: kubectl apply -f THIS_FILE\n")
    if example:
        head += ("# AN EXAMPLE: the Secrets' raft_password and client.token and the ConfigMap's raft_salt are\n"
                 "# placeholders (the servers refuse to start with the password and the salt). Put real ones in\n"
                 "# the cluster file and render again.\n")
    return head + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("cluster_file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", default="-", show_default=True, help="file to write (- for stdout)")
@click.option("--namespace", default="dfs", show_default=True)
@click.option("--image", default="dfs:latest", show_default=True, help="built from cluster/Dockerfile")
@click.option("--domain", default="cluster.local", show_default=True, help="the cluster's DNS domain")
@click.option("--mount-path", default="/mnt/dfs", show_default=True, help="where nodes see dfs")
@click.option("--storage-class", default=None, help="for every volume claim (default: the cluster's)")
@click.option("--mgmt-storage", default="1Gi", show_default=True)
@click.option("--meta-storage", default="20Gi", show_default=True)
@click.option("--target-storage", default="100Gi", show_default=True, help="per data target")
@click.option("--generate-token", is_flag=True,
              help="if the cluster file has no client token: put a fresh one (secrets.token_urlsafe) in the Secrets")
@click.option("--example", is_flag=True,
              help="render a documentation example: placeholder secrets allowed (the servers refuse them)")
def main(cluster_file: str, output: str, example: bool, **kw) -> None:
    """Render Kubernetes manifests for CLUSTER_FILE."""
    try:
        if example:
            with example_secrets():
                cfg = ClusterConfig.load(cluster_file)
        else:
            cfg = ClusterConfig.load(cluster_file)
        text = dump(render(cfg, Options(**kw)), os.path.basename(cluster_file), example)
    except (ValueError, KeyError, OSError) as e:
        raise click.ClickException(f"{cluster_file}: {e}") from None
    if output == "-":
        click.echo(text, nl=False)
    else:
        with open(output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
