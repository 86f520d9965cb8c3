"""The generated protobuf/gRPC code of the kino.v1 API (from protos/ by `make protos`), importable by the server
(serving/frontend) and the clients (kino/client.py, loadtests) alike. Do not edit."""
