"""The cost of the security layer: RPC latency with TLS and API keys vs plaintext."""
