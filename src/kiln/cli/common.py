"""Options shared by several commands, and their conversion into engine settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kiln.oci.store import Store, default_store_path
from kiln.registry.options import RegistryOptions

F = TypeVar("F", bound=Callable[..., Any])


def store_option(f: F) -> F:
    return click.option(
        "--store",
        "store_path",
        type=click.Path(path_type=Path),
        envvar="KILN_STORE",
        default=None,
        help="Local image store (an OCI layout). Default: $KILN_STORE, $XDG_DATA_HOME/kiln, ~/.local/share/kiln.",
    )(f)


def registry_options(f: F) -> F:
    f = click.option(
        "--insecure-registry",
        "insecure",
        multiple=True,
        metavar="HOST",
        help="Use plain HTTP for this registry host (loopback hosts always may). Repeatable.",
    )(f)
    f = click.option("--tls-ca", "ca_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Extra CA bundle for HTTPS registries.")(f)
    f = click.option("--authfile", "auth_file", type=click.Path(dir_okay=False, path_type=Path), envvar="REGISTRY_AUTH_FILE", help="containers-auth.json with credentials.")(f)
    return f


def progress_option(f: F) -> F:
    return click.option(
        "--progress",
        type=click.Choice(["auto", "plain", "tty", "quiet"]),
        default="auto",
        show_default=True,
        help="Progress output: bars on a terminal, plain lines otherwise.",
    )(f)


def open_store(store_path: Path | None) -> Store:
    return Store(store_path or default_store_path())


def make_registry_options(insecure: tuple[str, ...] = (), ca_file: Path | None = None, auth_file: Path | None = None) -> RegistryOptions:
    return RegistryOptions(insecure_registries=frozenset(insecure), ca_file=ca_file, auth_file=auth_file)
