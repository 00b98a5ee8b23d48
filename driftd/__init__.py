"""driftd: a flow-native vector database for timestamped embeddings.

``from driftd import DriftDB`` gives the in-process engine (needs the ``server``
extra). The gRPC client, ``driftd.client``, needs only grpcio, protobuf and numpy,
so nothing heavy is imported here eagerly.
"""

__version__ = "0.1.0"
__all__ = ["DriftDB", "__version__"]


def __getattr__(name: str):
    if name == "DriftDB":
        from driftd.engine import DriftDB

        return DriftDB
    raise AttributeError(f"module 'driftd' has no attribute {name!r}")
