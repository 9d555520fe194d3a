"""Metadata shards: key schema, state machine, cross-shard coordinator, service, server."""
