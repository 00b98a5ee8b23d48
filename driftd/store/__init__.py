"""Storage: driftd collections and points in Chroma (embedded or server)."""
