"""Checks shared by the tests of the command-line tools."""

import pytest


def assert_one_error_line_each(main, cases, capsys):
    """Each ``(argv, message)``: ``main(argv)`` exits with status 1 after printing one line
    on stderr, ``error: ...`` containing ``message``, and nothing on stdout."""
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        captured = capsys.readouterr()
        assert exit_info.value.code == 1, argv
        assert captured.err.startswith("error: ") and message in captured.err, (argv, captured.err)
        assert len(captured.err.strip().splitlines()) == 1 and not captured.out, argv
