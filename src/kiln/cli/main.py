"""`kiln` entry point: the one place where errors become a message and an exit code."""

from __future__ import annotations

import importlib
import os
import sys

import click

from kiln import __version__
from kiln.errors import KilnError

#: command name -> (module, attribute). Commands are imported only when used: `kiln pull`
#: should not pay for the build engine's, the S2I frontend's or the controller's imports.
COMMANDS: dict[str, tuple[str, str]] = {
    "pull": ("kiln.cli.images", "pull"),
    "push": ("kiln.cli.images", "push"),
    "copy": ("kiln.cli.images", "copy"),
    "inspect": ("kiln.cli.images", "inspect"),
    "images": ("kiln.cli.images", "images_cmd"),
    "tag": ("kiln.cli.images", "tag"),
    "rmi": ("kiln.cli.images", "rmi"),
    "prune": ("kiln.cli.images", "prune"),
    "build": ("kiln.cli.build", "build"),
    "run": ("kiln.cli.run", "run"),
    "rebase": ("kiln.cli.rebase", "rebase"),
    "s2i": ("kiln.cli.s2i", "s2i"),
    "start-build": ("kiln.cli.cluster", "start_build"),
    "logs": ("kiln.cli.cluster", "logs"),
    "cancel-build": ("kiln.cli.cluster", "cancel_build"),
    "get": ("kiln.cli.cluster", "get"),
    "install": ("kiln.cli.cluster", "install"),
    "controller": ("kiln.cli.cluster", "controller"),
    "rebuild-plan": ("kiln.cli.rebuildplan", "rebuild_plan"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        command = getattr(importlib.import_module(target[0]), target[1])
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="kiln")
def cli() -> None:
    """kiln: build, move and run OCI images without a daemon and without root."""


def _error_line(message: str) -> None:
    print(f"kiln: error: {message}", file=sys.stderr)


def _exit(code: int | str | None) -> None:
    """Leave without tearing the interpreter down: every file and lock is closed by now, and a
    CLI that exits in a tenth of a second less is a CLI that keeps up with Go tools."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code or 0)


#: Optional modules that `import httpx` and httpcore load eagerly whenever they are installed,
#: for features kiln never uses: httpx's own command line (which drags in rich and pygments) and
#: HTTP/2 (h2, hpack, hyperframe); together 50-80 ms of every registry command's start-up. kiln's
#: registry client speaks HTTP/1.1 and lightkube brings its own httpx2/httpcore2 with HTTP/2 off,
#: so the kiln process marks them absent (a None entry makes ``import`` raise ImportError) and
#: httpx/httpcore take their documented "extra not installed" fallbacks.
UNUSED_OPTIONAL_MODULES = ("httpx._main", "h2")


def main(argv: list[str] | None = None) -> None:
    for name in UNUSED_OPTIONAL_MODULES:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]  # None: "not installed"
    debug = bool(os.environ.get("KILN_DEBUG"))
    try:
        cli.main(args=argv, prog_name="kiln", standalone_mode=False)
    except click.exceptions.Exit as e:
        _exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        _exit(e.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        print("kiln: interrupted", file=sys.stderr)
        _exit(130)
    except KilnError as e:
        if debug:
            raise
        _error_line(e.message)
        source = getattr(e, "source_line", None)
        if source:
            print(f"    {source}", file=sys.stderr)
        tail = getattr(e, "tail", None)
        if tail:
            print("---- last output ----", file=sys.stderr)
            print(tail.rstrip("\n"), file=sys.stderr)
        _exit(e.exit_code)
    except OSError as e:
        if debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        _error_line(f"{e.strerror or e}{where}")
        _exit(1)
    _exit(0)
