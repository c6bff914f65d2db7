"""`backbone_options`: --clip/--pretrained/--preprocess/--device declared once, with one help text each."""

from __future__ import annotations

import click
from click.testing import CliRunner
import pytest

from zscir.backbone.options import (CLIP_HELP, DEVICE_HELP, PREPROCESS_HELP, PRETRAINED_HELP, backbone_options,
                                    device_option)
from zscir.cli import COMMANDS, LazyGroup, cli

# commands whose options are still declared by hand (their modules are being changed on other branches)
PENDING: set[str] = set()


def _commands():
    for name in COMMANDS:
        command = LazyGroup.get_command(cli, None, name)
        if isinstance(command, click.Group):
            for sub, subcommand in command.commands.items():
                yield f"{name} {sub}", subcommand
        else:
            yield name, command


@pytest.mark.parametrize("name,command", list(_commands()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_command_declares_the_backbone_options_alike(name, command):
    if name in PENDING:
        pytest.skip("declared by hand until its branch is merged")
    helps = {"--clip": CLIP_HELP, "--pretrained": PRETRAINED_HELP, "--preprocess": PREPROCESS_HELP,
             "--device": DEVICE_HELP}
    params = {"--clip": "clip", "--pretrained": "pretrained", "--preprocess": "preprocess", "--device": "device"}
    for option in command.params:
        flag = option.opts[0]
        if flag in helps:
            assert option.name == params[flag], (name, flag)
            assert option.help.startswith(helps[flag]), (name, flag, option.help)


def test_order_defaults_and_notes():
    @click.command()
    @backbone_options("Default: the world's.", random_weights=True, preprocess="targetpad", device_note="Per process.")
    @click.option("--other")
    def command(clip, pretrained, preprocess, device, other):
        click.echo(f"{clip} {pretrained} {preprocess} {device} {other}")

    assert [p.name for p in command.params] == ["clip", "pretrained", "preprocess", "device", "other"]
    by_name = {p.name: p for p in command.params}
    assert by_name["clip"].help == CLIP_HELP + " Default: the world's."
    assert "'none': random weights" in by_name["pretrained"].help
    assert by_name["device"].help == DEVICE_HELP + " Per process." and by_name["device"].default == "cpu"
    result = CliRunner().invoke(command, ["--clip", "ViT-B-32"])
    assert result.output == "ViT-B-32 None targetpad cpu None\n"

    @click.command()
    @backbone_options(required=True, device=False)
    def bare(clip, pretrained):
        pass

    assert [p.name for p in bare.params] == ["clip", "pretrained"] and bare.params[0].required
    assert "'none'" not in bare.params[1].help

    @click.command()
    @device_option(None, "Default: cuda when available.")
    def only_device(device):
        click.echo(repr(device))

    assert CliRunner().invoke(only_device, []).output == "None\n"
