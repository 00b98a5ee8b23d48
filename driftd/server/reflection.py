"""Server reflection that serves the proto files with their comments.

grpc's reflection serialises descriptors from the runtime pool, which has no
source info, so ``grpcurl describe`` would show no comments. ``make proto``
also writes ``driftd/v1/descriptor_set.binpb`` (protoc ``--include_source_info``);
this pool answers reflection's file lookups from it for driftd's own files.
"""

from __future__ import annotations

from importlib import resources

from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection

_DESCRIPTOR_SET = "descriptor_set.binpb"


class _CommentedFile:
    """A FileDescriptor whose ``CopyToProto`` includes source info (comments)."""

    def __init__(self, pool: CommentedPool, descriptor) -> None:
        self._pool = pool
        self._descriptor = descriptor
        self.name = descriptor.name

    @property
    def dependencies(self) -> list[_CommentedFile]:
        return [self._pool.wrap(d) for d in self._descriptor.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:  # noqa: N802 - protobuf's name
        commented = self._pool.commented.get(self.name)
        if commented is None:
            self._descriptor.CopyToProto(proto)
        else:
            proto.CopyFrom(commented)


class CommentedPool:
    """The default descriptor pool, with driftd's files served with comments."""

    def __init__(self) -> None:
        self._base = descriptor_pool.Default()
        data = (resources.files("driftd.v1") / _DESCRIPTOR_SET).read_bytes()
        fds = descriptor_pb2.FileDescriptorSet.FromString(data)
        self.commented = {f.name: f for f in fds.file}

    def wrap(self, descriptor) -> _CommentedFile:
        return _CommentedFile(self, descriptor)

    def FindFileByName(self, name: str) -> _CommentedFile:  # noqa: N802
        return self.wrap(self._base.FindFileByName(name))

    def FindFileContainingSymbol(self, symbol: str) -> _CommentedFile:  # noqa: N802
        return self.wrap(self._base.FindFileContainingSymbol(symbol))

    def __getattr__(self, name: str):
        # Extension lookups and the rest go to the default pool unchanged.
        return getattr(self._base, name)


def enable(service_names, server) -> None:
    """Enables v1alpha server reflection for ``service_names`` on ``server``."""
    reflection.enable_server_reflection(service_names, server, pool=CommentedPool())
