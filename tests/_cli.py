"""Running `zscir` in the test process, and what a one-line error looks like."""

import re

import pytest

from zscir.cli import main


def run(args, capsys):
    """`zscir ARGS` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def one_line_error(code, err, pattern):
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), (pattern, lines[0])
