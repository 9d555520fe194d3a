"""What every dfs process speaks on the network, client or server: the data plane's
frames (``dataplane``) and the credentials and TLS of gRPC and the data plane
(``auth``). Imports: dfs.common and the generated stubs only."""
