"""Shared CLI plumbing: error mapping, consoles, logging. Only the CLI prints."""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from sepcli.dsp import PHASE_METHODS
from sepcli.errors import SepcliError, exit_code_for
from sepcli.inference.config import PRECISIONS

F = TypeVar("F", bound=Callable[..., Any])

#: stderr console for messages and progress; stdout stays clean for data (--json, paths).
err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)


def card_table() -> Table:
    """The two-column key/value table of an ``info`` command (bold key, folded value)."""
    table = Table(show_header=False, show_edge=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    return table


def archive_output_options(func: F) -> F:
    """``-o/--output FILE.sepcli`` (required) and ``--force``, for commands that write an archive."""
    func = click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")(func)
    return click.option(
        "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
        help="Archive to write (.sepcli).",
    )(func)  # fmt: skip


def refuse_existing(output: Path, force: bool) -> None:
    """Raise a usage error if ``output`` exists and ``--force`` was not given."""
    from sepcli.errors import UsageError

    if output.exists() and not force:
        raise UsageError(f"{output}: already exists (use --force to overwrite)")


def bars_shown(quiet: bool = False) -> bool:
    """Whether to draw progress bars: not with ``--quiet``, and only on a terminal.

    On a pipe or a log file a bar is noise, and rich ends a stopped transient
    bar there with a bare newline (every run's stderr began with an empty line).
    """
    return not quiet and err_console.is_terminal


def fail(message: str, code: int = 1) -> None:
    """Print one error line on stderr and exit with ``code``."""
    from rich.markup import escape  # a message may hold brackets: 'sepcli[live]', paths

    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    sys.exit(code)


def handle_errors(func: F) -> F:
    """Decorator for click commands: typed errors become one line + exit code.

    ``KeyboardInterrupt`` exits 130 after one line, SIGTERM 143 and SIGHUP 129
    (after the same clean-up: :mod:`sepcli.cli.termination`); unexpected
    exceptions keep their traceback only when ``SEPCLI_DEBUG`` is set.
    """
    from sepcli.cli.termination import Terminated, sigterm_raises

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with sigterm_raises():
                return func(*args, **kwargs)
        except Terminated as exc:
            err_console.print("terminated", style="yellow")
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("interrupted", style="yellow")
            sys.exit(130)
        except SepcliError as exc:
            fail(str(exc), exit_code_for(exc))
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise

    return wrapper  # type: ignore[return-value]


#: The one handler :func:`setup_logging` puts on the ``sepcli`` logger (replaced
#: on each call, so an in-process CLI run writes to that run's stderr).
_handler: logging.Handler | None = None


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Route sepcli's logging to stderr; warnings from torch.jit are silenced.

    Only the ``sepcli`` logger is configured (its level and one stderr handler):
    the root logger, and with it the logging of a program that runs the CLI
    in-process, is left as it was.
    """
    global _handler
    level = logging.ERROR if quiet else (logging.DEBUG if verbose else logging.WARNING)
    logger = logging.getLogger("sepcli")
    if _handler is not None:
        logger.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(level)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch(\.|$)")


class _BatchSize(click.ParamType):
    """``auto`` (0) or a positive number of chunks."""

    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return 0
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is not a number of chunks or 'auto'", param, ctx)
        if number < 1:
            self.fail(f"{value!r}: give at least 1 (or 'auto')", param, ctx)
        return number


#: The Separator's knobs, shared by ``separate`` and ``evaluate``: one spelling each;
#: their values are checked once, by :class:`~sepcli.inference.config.SeparatorConfig`.
_SEPARATOR_OPTIONS = [
    click.option(
        "--segment",
        "segment_seconds",
        type=float,
        default=None,
        help="Chunk length in seconds (default: the model's).",
    ),
    click.option(
        "--overlap",
        type=float,
        default=None,
        help="Fraction of a chunk shared with the next, 0 to 0.9 (default: the model's; 0.25 "
        "for most, a 0.25-s crossfade for Open-Unmix, whose chunks see 2 s of real audio "
        "each side).",
    ),
    click.option(
        "--shifts",
        type=int,
        default=0,
        show_default=True,
        help="Random time-shift passes averaged (better quality, N times slower; up to 100).",
    ),
    click.option(
        "--seed", type=int, default=0, show_default=True, help="Seed for shifts and random phase."
    ),
    click.option(
        "--phase",
        type=click.Choice(PHASE_METHODS),
        default=None,
        help="Phase for spectrogram models (default: the model's).",
    ),
    click.option("--wiener-iters", type=int, default=1, show_default=True, help="0 to 10."),
    click.option("--gl-iters", type=int, default=32, show_default=True, help="1 to 1000."),
    click.option(
        "--gl-init", type=click.Choice(["mixture", "random"]), default="mixture", show_default=True
    ),
    click.option(
        "--batch-size",
        type=_BatchSize(),
        default="auto",
        show_default=True,
        help="Chunks per forward pass; auto = 1 on the CPU, on a GPU up to 16, halved while "
        "out of memory.",
    ),
    click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default="fp32",
        show_default=True,
        help="Network forward in float32, float16 or bfloat16 (STFT and phase stay float32).",
    ),
]
_SEPARATOR_FIELDS = (
    "segment_seconds", "overlap", "shifts", "seed", "phase", "wiener_iters", "gl_iters", "gl_init",
    "batch_size", "precision",
)  # fmt: skip


def separator_options(func: F) -> F:
    """Add the separator's options; the command receives one ``separator_config``.

    ``--segment --overlap --shifts --seed --phase --wiener-iters --gl-iters
    --gl-init --batch-size --precision`` become a validated
    :class:`~sepcli.inference.config.SeparatorConfig` (a bad value is one error
    line and exit 2).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sepcli.inference.config import SeparatorConfig

        values = {name: kwargs.pop(name) for name in _SEPARATOR_FIELDS}
        try:
            kwargs["separator_config"] = SeparatorConfig(**values)
        except SepcliError as exc:
            fail(str(exc), exit_code_for(exc))
        return func(*args, **kwargs)

    for option in reversed(_SEPARATOR_OPTIONS):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]
