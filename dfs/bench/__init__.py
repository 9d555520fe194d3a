"""Benchmark drivers (``dfs bench ...``): real clusters on loopback, measured end to end."""
