"""Kino's client and command line: `kino` (kino/cli) over the gRPC API (kino/client.py, the kino_api stubs)."""
