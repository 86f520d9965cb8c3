"""Generated protobuf/gRPC code for the kino.v1 API (from protos/ by `make protos`). Do not edit."""
