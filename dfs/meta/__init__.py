"""Metadata shards: key schema, state machine, one module per op (ops/), cross-shard coordinator, service, server."""
