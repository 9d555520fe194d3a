"""Reaching the cluster's servers as a client does (the library, the mount, and servers
calling other servers): the metadata shards over gRPC with the cluster map and
leader following (``shards``: ``GrpcTransport``, a ``dfs.common.shards.ShardCalls``),
and the data servers over the data plane (``data``: ``DataClient``, ``Pool``).
Servers serve with ``dfs.wire``; nothing here serves. Imports: dfs.common,
dfs.wire and the generated stubs only."""
