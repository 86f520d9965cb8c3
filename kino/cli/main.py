"""The `kino` command: one entry point, one module per command group."""

from __future__ import annotations

import argparse
import logging
import sys

from engines.errors import EngineError
from kino.cli import (
    admin_cmd,
    audit_cmd,
    cameo_cmd,
    engines_cmd,
    feed_cmd,
    loadtest_cmd,
    remix_cmd,
    run_cmd,
    serve_cmd,
    videos_cmd,
)
from kino.client import ClientError
from serving.db import SchemaOutOfDate
from serving.errors import KinoError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kino",
        description="Kino: text-to-video-with-audio serving. Run `kino COMMAND --help` for a command's options.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd.register(sub)
    videos_cmd.register(sub)
    remix_cmd.register(sub)
    feed_cmd.register(sub)
    cameo_cmd.register(sub)
    audit_cmd.register(sub)
    loadtest_cmd.register(sub)
    admin_cmd.register(sub)
    engines_cmd.register(sub)
    run_cmd.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (EngineError, KinoError, ClientError, SchemaOutOfDate) as e:
        print(f"kino: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
