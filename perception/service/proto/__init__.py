"""Protocol buffers of the gRPC API: ``perception.proto`` and its generated stubs (``perception_pb2*``)."""
