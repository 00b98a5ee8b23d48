"""Generated gRPC/protobuf modules of the driftd.v1 API (``make proto``)."""
