"""The ``mllm`` command table: every command is listed and answers ``--help``."""

from __future__ import annotations

import pytest

from mllm.cli import COMMANDS, main

#: Commands whose own sub-command comes first (``mllm data check``, ``mllm recipe check``).
HELP_ARGS = {"data": ["data", "check", "--help"], "recipe": ["recipe", "check", "--help"]}


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name, (_, help_text) in COMMANDS.items():
        assert name in out
        assert help_text.split()[0] in out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_answers_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        main(HELP_ARGS.get(name, [name, "--help"]))
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["no-such-command"])
    assert done.value.code == 2
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err
