"""The OpenAI-compatible Videos REST API: the same domain as gRPC, in the OpenAI shapes."""
