"""Cluster commands: start-build, logs, cancel-build, get, install, controller."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kiln.cli.common import make_registry_options, open_store, registry_options, store_option
from kiln.errors import KilnError, UsageError

if TYPE_CHECKING:
    from kiln.cluster.kube import Kube
    from kiln.cluster.models import Build
    from kiln.registry.options import RegistryOptions

namespace_option = click.option("-n", "--namespace", default=None, help="Namespace (default: the kubeconfig context's).")


class BuildNotCompleteError(KilnError):
    pass


def _kube() -> Kube:
    from kiln.cluster.kube import Kube

    return Kube()


def _ns(kube: Kube, namespace: str | None) -> str:
    return namespace or str(getattr(kube.api, "namespace", None) or "default")


def _env(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in values:
        key, eq, value = item.partition("=")
        if not key or not eq:
            raise UsageError(f"--env {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


@click.command("start-build")
@click.argument("buildconfig")
@namespace_option
@click.option("--from-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Upload this directory as the binary source.")
@click.option("--from-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Upload this file as the binary source.")
@click.option("--binary-repo", metavar="REPO", help="Where the upload goes (default: the output image's repository).")
@click.option("-e", "--env", "envs", multiple=True, metavar="K=V", help="Set in the strategy's environment for this build.")
@click.option("-w", "--wait", is_flag=True, help="Wait for the build; exit 0 only if it completes.")
@click.option("-F", "--follow", is_flag=True, help="Stream the build's log, then wait as --wait does.")
@click.option("--timeout", type=float, default=None, metavar="SECONDS", help="With --wait/--follow: give up after SECONDS.")
@store_option
@registry_options
def start_build(buildconfig: str, namespace: str | None, from_dir: Path | None, from_file: Path | None, binary_repo: str | None,
                envs: tuple[str, ...], wait: bool, follow: bool, timeout: float | None, store_path: Path | None,
                insecure: tuple[str, ...], ca_file: Path | None, auth_file: Path | None) -> None:  # fmt: skip
    """Start a build of BUILDCONFIG (a Build named BUILDCONFIG-N)."""
    from kiln.cluster.instantiate import start_build as instantiate

    if from_dir and from_file:
        raise UsageError("--from-dir and --from-file are mutually exclusive")
    kube = _kube()
    ns = _ns(kube, namespace)
    artifact = None
    source = from_dir or from_file
    if source is not None:
        artifact = _upload(kube, ns, buildconfig, source, binary_repo, store_path, make_registry_options(insecure, ca_file, auth_file))
    build = instantiate(kube, ns, buildconfig, env=_env(envs), binary_artifact=artifact)
    click.echo(f"build.kiln.dev/{build.name} started")
    if follow:
        from kiln.cluster.follow import follow_log

        for line in follow_log(kube, ns, build.name, follow=True):
            sys.stdout.write(line)
            sys.stdout.flush()
    if wait or follow:
        _wait(kube, ns, build.name, timeout)


def _upload(kube: Kube, ns: str, config: str, source: Path, repo: str | None, store_path: Path | None, registry: RegistryOptions) -> str:
    from kiln.cluster.binary import upload
    from kiln.registry.reference import Reference

    bc = kube.get_config(ns, config)
    if bc is None:
        raise UsageError(f"buildconfig {ns}/{config}: not found")
    if repo is None:
        if bc.spec.output.to is None:
            raise UsageError(f"buildconfig {config} has no output image: give --binary-repo REPO for the upload")
        ref = Reference.parse(bc.spec.output.to.name)
        repo = f"{ref.registry}/{ref.repository}"
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    dest = Reference.parse(f"{repo}:kiln-binary-{config}-{stamp}")
    click.echo(f"Uploading {source} to {dest.registry}/{dest.repository} ...", err=True)
    as_file = bc.spec.source.binary.as_file if bc.spec.source.binary is not None else None
    return upload(source, dest, open_store(store_path), registry, as_file=as_file)


def _wait(kube: Kube, ns: str, name: str, timeout: float | None) -> None:
    from kiln.cluster.follow import wait_for_build
    from kiln.cluster.models import BuildPhase

    def show(b: Build) -> None:
        click.echo(f"build.kiln.dev/{name} {b.status.phase.value}", err=True)

    build = wait_for_build(kube, ns, name, timeout=timeout, on_phase=show)
    if build.status.phase is not BuildPhase.COMPLETE:
        detail = f": {build.status.reason}" + (f": {build.status.message}" if build.status.message else "") if build.status.reason else ""
        raise BuildNotCompleteError(f"build {name} {build.status.phase.value.lower()}{detail}")
    if build.status.image_digest:
        click.echo(f"{build.status.output_docker_image_reference or ''}@{build.status.image_digest}".lstrip("@"))


@click.command()
@click.argument("target", metavar="build/NAME|bc/NAME")
@namespace_option
@click.option("-f", "--follow", is_flag=True, help="Stream the log until the build ends.")
def logs(target: str, namespace: str | None, follow: bool) -> None:
    """Print a build's log (bc/NAME: its latest build)."""
    from kiln.cluster.follow import follow_log, latest_build_name

    kind, slash, name = target.partition("/")
    if not slash or not name or kind not in ("build", "builds", "kb", "bc", "buildconfig", "buildconfigs"):
        raise UsageError(f"{target!r}: expected build/NAME or bc/NAME")
    kube = _kube()
    ns = _ns(kube, namespace)
    if kind in ("bc", "buildconfig", "buildconfigs"):
        name = latest_build_name(kube, ns, name)
    for line in follow_log(kube, ns, name, follow=follow):
        sys.stdout.write(line)
        sys.stdout.flush()


@click.command("cancel-build")
@click.argument("names", nargs=-1, required=True)
@namespace_option
@click.option("-w", "--wait", is_flag=True, help="Wait until the controller has cancelled it.")
def cancel_build(names: tuple[str, ...], namespace: str | None, wait: bool) -> None:
    """Cancel builds: the controller removes their pods and marks them Cancelled."""
    from kiln.cluster.follow import wait_for_build

    kube = _kube()
    ns = _ns(kube, namespace)
    for name in names:
        build = kube.get_build(ns, name)
        if build is None:
            raise UsageError(f"build {ns}/{name}: not found")
        if build.status.phase.terminal:
            click.echo(f"build.kiln.dev/{name} already {build.status.phase.value}")
            continue
        kube.patch_status("Build", ns, name, None, {"cancelled": True})
        if wait:
            build = wait_for_build(kube, ns, name, timeout=120)
        click.echo(f"build.kiln.dev/{name} {'cancelled' if not wait else build.status.phase.value}")


@click.group()
def get() -> None:
    """List kiln objects."""


@get.command("builds")
@namespace_option
@click.option("-A", "--all-namespaces", is_flag=True)
@click.argument("config", required=False)
def get_builds(namespace: str | None, all_namespaces: bool, config: str | None) -> None:
    """Builds as a table (CONFIG: only that BuildConfig's)."""
    from kiln.cluster.table import builds_table

    kube = _kube()
    builds = kube.list_builds(None if all_namespaces else _ns(kube, namespace), config)
    click.echo(builds_table(builds, now=datetime.now(UTC), namespaces=all_namespaces))


@click.command()
@click.option("--builder-image", default=None, help="Builder image for build pods and the controller.")
@click.option("--namespace", "install_ns", default=None, help="Namespace of the controller and registry (default kiln-system).")
@click.option("--host-users", is_flag=True, help="Build pods without a user namespace (nodes without user namespace support).")
@click.option("--no-registry", is_flag=True, help="Do not deploy the integrated registry.")
@click.option("--dry-run", is_flag=True, help="Ask the API server to validate only.")
def install(builder_image: str | None, install_ns: str | None, host_users: bool, no_registry: bool, dry_run: bool) -> None:
    """Install kiln (CRDs, RBAC, controller, registry) into the current kubeconfig context."""
    from kiln.cluster.install import install as do_install
    from kiln.cluster.manifests import InstallOptions

    base = InstallOptions()
    opts = InstallOptions(namespace=install_ns or base.namespace, host_users=host_users, with_registry=not no_registry)
    if builder_image:
        opts = InstallOptions(namespace=opts.namespace, builder_image=builder_image, host_users=host_users, with_registry=not no_registry)
    do_install(_kube(), opts, say=click.echo, dry_run=dry_run)


@click.command()
@click.option("-n", "--namespace", default=None, help="Watch this namespace only (default: all).")
@click.option("--builder-image", default=None, envvar="KILN_BUILDER_IMAGE", help="Image of the build pods.")
@click.option("--insecure-registry", "insecure", multiple=True, metavar="HOST", help="Build pods reach this registry over plain HTTP.")
@click.option("--webhook-listen", default=None, envvar="KILN_WEBHOOK_LISTEN", metavar="HOST:PORT",
              help="Serve build webhooks and registry notifications here (default: off; env KILN_WEBHOOK_LISTEN).")  # fmt: skip
@click.option("--poll-interval", type=float, default=None, help="Seconds between polls of watched image tags; 0: no polling (env KILN_POLL_INTERVAL, default 120).")
@click.option("--max-triggered-builds", type=int, default=None, help="Triggered builds running at once in the cluster; 0: no limit (default 8).")
@click.option("--max-triggered-builds-per-namespace", type=int, default=None, help="Triggered builds running at once per namespace; 0: no limit (default 4).")
@click.option("--watchdog-seconds", type=click.FloatRange(min=0), default=300.0, envvar="KILN_WATCHDOG_SECONDS", show_default=True,
              help="Exit (code 3, to be restarted) when work stays in flight this long; 0: off (env KILN_WATCHDOG_SECONDS).")  # fmt: skip
def controller(namespace: str | None, builder_image: str | None, insecure: tuple[str, ...], webhook_listen: str | None, poll_interval: float | None,
               max_triggered_builds: int | None, max_triggered_builds_per_namespace: int | None, watchdog_seconds: float) -> None:  # fmt: skip
    """Run the Build controller (until interrupted). Build pod settings come from KILN_* variables.

    Triggers: ImageChange (registry notifications at POST /notifications, authenticated by the
    bearer token in KILN_NOTIFICATION_TOKEN, and polling), webhooks (POST
    /webhooks/NAMESPACE/BUILDCONFIG/{generic,github,gitlab,bitbucket}) and ConfigChange.
    """
    from dataclasses import replace

    from kiln.cluster.controller import run, settings_from_env, trigger_settings_from_env
    from kiln.cluster.fleet import FleetLimits

    env = dict(os.environ)
    if webhook_listen:
        env["KILN_WEBHOOK_LISTEN"] = webhook_listen
    triggers = trigger_settings_from_env(env)
    if poll_interval is not None:
        triggers = replace(triggers, poll_interval=poll_interval)
    cluster_max = triggers.limits.cluster if max_triggered_builds is None else max_triggered_builds
    ns_max = triggers.limits.namespace if max_triggered_builds_per_namespace is None else max_triggered_builds_per_namespace
    triggers = replace(triggers, limits=FleetLimits(cluster_max, ns_max))

    settings = settings_from_env(dict(os.environ))
    if builder_image:
        settings = replace(settings, builder_image=builder_image)
    if insecure:
        settings = replace(settings, insecure_registries=settings.insecure_registries + insecure)
    run(settings, namespace, triggers=triggers, watchdog_seconds=watchdog_seconds)

