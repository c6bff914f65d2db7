import subprocess
import sys

from click.testing import CliRunner

from zscir import __version__
from zscir.cli import cli


def test_help_and_version_through_click():
    runner = CliRunner()
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0 and "composed" in result.output
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_every_registered_command_has_help():
    from zscir.cli import COMMANDS

    runner = CliRunner()
    for name in COMMANDS:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage" in result.output


def test_console_script_installed():
    out = subprocess.run(["zscir", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout
    out = subprocess.run(["zscir", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "backbone" in out.stdout


def test_missing_weights_in_cli_is_one_line_without_traceback():
    out = subprocess.run([sys.executable, "-m", "zscir.cli", "backbone", "--clip", "ViT-B-32", "--pretrained", "openai"],
                         capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: weights for ViT-B-32") and "Traceback" not in out.stderr
