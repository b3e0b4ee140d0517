"""The serving service: OIP v2 gRPC inference on ONNX Runtime with hot swap, shadow and canary."""
