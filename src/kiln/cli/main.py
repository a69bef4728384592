"""`kiln` entry point: the one place where errors become a message and an exit code."""

from __future__ import annotations

import os
import sys

import click

from kiln import __version__
from kiln.errors import KilnError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="kiln")
def cli() -> None:
    """kiln: build, move and run OCI images without a daemon and without root."""


def _register() -> None:
    from kiln.cli import build, cluster, images, run

    images.register(cli)
    build.register(cli)
    run.register(cli)
    cluster.register(cli)
    from kiln.cli import s2i
    s2i.register(cli)


def _error_line(message: str) -> None:
    print(f"kiln: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    _register()
    debug = bool(os.environ.get("KILN_DEBUG"))
    try:
        cli.main(args=argv, prog_name="kiln", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        print("kiln: interrupted", file=sys.stderr)
        sys.exit(130)
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
        sys.exit(e.exit_code)
    except OSError as e:
        if debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        _error_line(f"{e.strerror or e}{where}")
        sys.exit(1)
    sys.exit(0)
