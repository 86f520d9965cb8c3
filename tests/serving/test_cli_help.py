"""Every command, sub-command, argument and option of `kino` says what it is in --help."""

from __future__ import annotations

import argparse

from kino.cli.main import build_parser


def _walk(parser: argparse.ArgumentParser, path: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions if a.help}
            for name, child in action.choices.items():
                yield f"{path} {name}", "the command itself", name in helped
                yield from _walk(child, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, "/".join(action.option_strings) or action.dest, bool(action.help)


def test_every_argument_has_help():
    missing = [f"{path}: {what}" for path, what, ok in _walk(build_parser(), "kino") if not ok]
    assert not missing, "no help text:\n" + "\n".join(missing)


COMMANDS = ["serve", "demo", "generate", "list", "get", "cancel", "delete", "download", "run", "remix", "publish",
            "feed", "audit", "cameo", "admin"]


def test_every_command_explains_itself(capsys):
    import pytest

    from kino.cli.main import main

    for command in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        out = capsys.readouterr().out
        assert done.value.code == 0 and f"usage: kino {command}" in out and "--" in out, command


def test_generate_and_run_take_repeated_loras_with_a_default_scale():
    from kino.cli.options import request_from_args
    from kino.cli.videos_cmd import create_request

    parser = build_parser()
    generate = parser.parse_args(["generate", "x", "--lora", "style", "--lora", "ink:-0.5"])
    assert [(r.name, r.scale) for r in create_request(generate).loras] == [("style", 1.0), ("ink", -0.5)]
    run = parser.parse_args(["run", "x", "--lora-dir", "/adapters", "--lora", "style:0.8"])
    assert request_from_args(run).loras == (("style", 0.8),) and run.lora_dir == "/adapters"
    assert request_from_args(parser.parse_args(["run", "x"])).loras == ()
