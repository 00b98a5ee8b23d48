"""driftd's gRPC transport: servicers, error mapping, interceptors and lifecycle.

``serve()`` runs the server inside an event loop; ``run()`` is the process entry
point (logging, signals).
"""

from driftd.server.app import run, serve

__all__ = ["run", "serve"]
