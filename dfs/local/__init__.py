"""Running a cluster's server processes on this machine (production: ``dfs
cluster up``, ``dfs demo``, ``dfs admin add-meta-shard --start``, ``dfs
bench``).

* ``procs``: one process per server role, spawned, stopped, killed and waited
  for by the object that started it (``ServerGroup``); PIDs of processes
  another command started;
* ``cluster``: ``LocalCluster``, a whole cluster on loopback from a generated
  cluster file, grown replica by replica, shard by shard, server by server;
* ``probe``: a replica's Status, the first answering mgmt replica's map;
* ``pids``: ``pids.json``, what ``dfs cluster up`` left running.

The tests build on it (``dfs.testing.cluster.LocalCluster`` adds clients and
reads of a replica's RocksDB; ``dfs.testing.netns.NetnsCluster`` runs the same
processes in network namespaces).

May import: dfs.common, dfs.wire and the generated stubs; never the client
library, the servers' code (it runs them as ``python -m``), cli, bench or testing.
"""
