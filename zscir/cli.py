"""The ``zscir`` command line: a thin shell over importable functions.

Commands live next to the code they drive (``zscir/<area>/cli.py``) and are
registered here by name, imported only when used so that ``zscir --help``
stays fast. Errors meant for the user (:class:`zscir.errors.ZscirError`) are
printed on one line and exit with status 1, without a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from zscir import __version__
from zscir.errors import ZscirError

# command name -> "module:attribute" of a click command or group
COMMANDS: dict[str, str] = {
    "world": "zscir.world.cli:world",
    "backbone": "zscir.backbone.cli:backbone",
    "caption": "zscir.data.cli:caption",
    "eval": "zscir.evaluation.cli:eval_command",
    "index": "zscir.index.cli:index",
    "pretrain": "zscir.training.pretrain_cli:pretrain",
    "train-supervised": "zscir.training.supervised_cli:train_supervised",
    "retrieve": "zscir.index.cli:retrieve",
    "import-checkpoint": "zscir.importers.cli:import_checkpoint_command",
    "explain": "zscir.models.explain:explain_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zscir")
def cli():
    """Zero-shot composed image retrieval: a reference image plus a modification text -> a ranked gallery."""


def main(argv=None):
    try:
        rv = cli.main(args=argv, prog_name="zscir", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except ZscirError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
