"""The ``sepcli`` command: a click group with one module per command group.

Command modules are imported only when their command runs (or when help lists
them), so ``sepcli models list`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib

import click

from sepcli import __version__

#: command name -> "module:attribute" of the click command.
COMMANDS = {
    "separate": "sepcli.cli.separate:separate",
    "live": "sepcli.cli.live:live_command",
    "models": "sepcli.cli.models:models",
    "presets": "sepcli.cli.presets:presets",
    "evaluate": "sepcli.cli.evaluate:evaluate",
    "compare": "sepcli.cli.evaluate:compare",
    "train": "sepcli.cli.train:train",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="sepcli")
def main() -> None:
    """Separate music into stems: vocals, accompaniment, drums, bass, other."""
