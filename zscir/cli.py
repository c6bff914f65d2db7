"""The ``zscir`` command line: a thin shell over importable functions.

Commands live next to the code they drive (``zscir/<area>/cli.py``) and are
registered here by name, imported only when used: ``zscir --help`` lists
them from ``SHORT_HELP`` without importing any (tests check that the texts match
the commands' own). :func:`main` is the one place where errors become CLI
lines: :class:`zscir.errors.ZscirError` and what :func:`zscir.errors.user_message`
recognises (OSError, damaged files, refused pickles, ...) print one line and
exit 1; usage errors exit 2; Ctrl-C exits 130. Anything else is a bug and keeps
its traceback. Every line starts on a line of its own: progress bars still open
are closed first (their last state stays on screen, then a newline).
"""

from __future__ import annotations

import importlib
import sys

import click
from tqdm import tqdm

from zscir import __version__
from zscir.errors import user_message

# command name -> "module:attribute" of a click command or group
COMMANDS: dict[str, str] = {
    "world": "zscir.world.cli:world",
    "backbone": "zscir.backbone.cli:backbone",
    "caption": "zscir.data.cli:caption",
    "edit": "zscir.generation.cli:edit",
    "eval": "zscir.evaluation.cli:eval_command",
    "index": "zscir.index.cli:index",
    "pretrain": "zscir.training.pretrain_cli:pretrain",
    "train-supervised": "zscir.training.supervised_cli:train_supervised",
    "retrieve": "zscir.index.cli:retrieve",
    "import-checkpoint": "zscir.importers.cli:import_checkpoint_command",
    "serve": "zscir.serve.cli:serve",
    "explain": "zscir.models.explain_cli:explain_command",
}


# command name -> its one-line help, so that `zscir --help` imports no command (torch, open_clip).
# A command missing here still works; `zscir --help` then imports it to read its help.
SHORT_HELP: dict[str, str] = {
    "world": "The shapes world: an offline procedural CIR benchmark with its own tiny CLIP.",
    "backbone": "Load a backbone and print its identity and dimensions.",
    "caption": "Caption every image of --images once; rerun to resume after a kill or to add new images.",
    "edit": "Rewrite captions as instructions say, with a language model; rerun to resume, cached edits are free.",
    "eval": "Evaluate on BENCHMARK: metrics table, results.json/.md and top-50 rankings (submission format) in the run dir.",
    "index": "Encode a folder of images (only new or changed ones on a rerun) and build a searchable index.",
    "pretrain": "Pretrain a method's network on unlabeled images, or on captions alone for lincir (FTI4CIR by default).",
    "train-supervised": "Train a supervised composition head on frozen CLIP features (cached), for comparison with zero-shot models.",
    "retrieve": "Rank the gallery for a reference image plus a modification text.",
    "import-checkpoint": "Import a released FTI4CIR, SEARLE, Pic2Word, LinCIR or Context-I2W checkpoint as a zscir checkpoint.",
    "serve": "Serve composed search over HTTP: a JSON API (schema at /openapi.json) and a web page at /.",
    "explain": "Nearest vocabulary words of each pseudo-word of REF (FTI4CIR's pseudo-to-real analysis), with the reference's true caption when REF is a shapes-world image.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def format_commands(self, ctx, formatter):
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = []
        for name in self.list_commands(ctx):
            text = SHORT_HELP.get(name)
            if text is None:
                text = self.get_command(ctx, name).get_short_help_str(limit)
            elif len(text) > limit:
                text = text[: max(limit - 3, 0)].rsplit(" ", 1)[0] + "..."
            rows.append((name, text))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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


def end_progress_bars() -> None:
    """Close the tqdm bars still open (a command that failed mid-loop) so that what follows starts a line."""
    classes, bars = [tqdm], set()
    while classes:  # each tqdm class (tqdm.auto's among them) may keep its own set of open bars
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        bars.update(vars(cls).get("_instances", ()))
    for bar in bars:
        try:
            bar.close()
        except Exception:  # a bar half torn down already: the message matters more than its last refresh
            pass


def _say(line: str) -> None:
    end_progress_bars()
    click.echo(line, err=True)


def main(argv=None):
    try:
        rv = cli.main(args=argv, prog_name="zscir", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _say("interrupted: what was finished is kept; rerun the same command to resume")
        sys.exit(130)
    except click.UsageError as e:  # one line, as every other error: what was wrong, and where the help is
        where = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        _say(f"error: {' '.join(e.format_message().split())}{where}")
        sys.exit(e.exit_code)
    except click.ClickException as e:
        _say(f"error: {' '.join(e.format_message().split())}")
        sys.exit(e.exit_code)
    except Exception as e:
        message = user_message(e)
        if message is None:
            end_progress_bars()
            raise  # a bug: keep the traceback
        _say(f"error: {' '.join(message.split())}")
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
