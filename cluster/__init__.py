"""Multi-machine deployment of dfs from one cluster file.

`plan` works out which role runs where, `bootstrap` installs and starts the
systemd units over ssh, `render_k8s` writes the Kubernetes manifests. None of
them is imported by the `dfs` package.
"""
