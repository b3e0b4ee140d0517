"""The REST adapter: OIP v2 (KServe v2 REST) with Triton's binary tensor data extension."""
