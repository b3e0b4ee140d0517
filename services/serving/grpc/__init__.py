"""The gRPC adapter: OIP v2 servicer, protobuf codec, auth and the server itself."""
