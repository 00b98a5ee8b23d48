"""Scale-out benchmarks: memory and ingest of replicas that own keys (issue 15)."""
