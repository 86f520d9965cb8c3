"""The `kino` command: one entry point, one module per command group."""

from __future__ import annotations

import argparse
import logging
import sys

from engines.errors import EngineError
from serving.cli import admin_cmd, engines_cmd, loadtest_cmd, run_local, serve_cmd, trust_cmd, videos_cmd
from serving.errors import KinoError
from serving.frontend.grpc.client import ClientError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kino",
        description="Kino: text-to-video-with-audio serving. Run `kino COMMAND --help` for a command's options.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd.register(sub)
    videos_cmd.register(sub)
    trust_cmd.register(sub)
    loadtest_cmd.register(sub)
    admin_cmd.register(sub)
    engines_cmd.register(sub)
    run_local.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (EngineError, KinoError, ClientError) as e:
        print(f"kino: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
