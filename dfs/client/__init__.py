"""Client side: routing, the namespace API, the sync facade. Imports only dfs.common and the generated stubs."""
