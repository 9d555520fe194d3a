"""The cluster map service: a small Raft group holding shards, replicas, addresses and the epoch."""
