"""Pieces every layer shares: ids, records, errors, limits. Imports nothing of dfs."""
