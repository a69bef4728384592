"""End-to-end fixtures: a real control plane (etcd, kube-apiserver, kube-controller-manager),
a loopback registry and kiln's test-only node agent. See tests/e2e/cluster_fixtures.py and
docs/dev-cluster.md.

Fixtures:
    cluster          (session)  Cluster: kubeconfig, server, ca_file, registry, registry_url,
                                node_name, state_dir, reused, api(), client(), image(), log_tail()
    kube_api         (session)  dev.kubeapi.KubeApi with admin credentials (JSON dicts)
    kube             (session)  lightkube.Client with admin credentials
    namespace        (function) a fresh namespace, deleted after the test
    cluster_busybox  (session)  "127.0.0.1:PORT/e2e/busybox:latest": a busybox-static image
                                (tests/fixtures/images.py) pushed to the cluster registry
    builder_image    (session)  the kiln builder image built by kiln from deploy/builder/Dockerfile
                                and pushed to the cluster registry (skips while it does not exist)
    installed        (session)  kiln's CRDs and RBAC applied, the builder image built and pushed
                                (tests/cluster/e2e_support.py)
    ctl              (session)  `kiln controller` running on the host with the controller's RBAC
    k                (function) kiln.cluster.kube.Kube with admin credentials

The control-plane binaries are built (once, cached in ~/.cache/kiln-testbin) before the first
test runs, outside any test's timeout; if they cannot be built (no network) every test using
`cluster` is skipped with the reason.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from dev import testbin
from dev.kubeapi import KubeApi

from kiln.cluster.kube import Kube
from tests.cluster import e2e_support as e2e
from tests.e2e.cluster_fixtures import (
    Cluster,
    create_namespace,
    delete_namespace,
    session_builder_image,
    start_session_cluster,
)
from tests.fixtures.images import make_busybox_oci_layout, push_with_skopeo

_UNAVAILABLE = pytest.StashKey[str]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the binaries before any test starts (a first build takes minutes; per-test timeouts
    would cut it), only when a selected test needs the cluster and none is being reused."""
    config = session.config
    if config.option.collectonly or os.environ.get("KILN_DEV_KUBECONFIG"):
        return
    if not any("cluster" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    if testbin.cached_binaries() is not None:
        return
    capman = config.pluginmanager.getplugin("capturemanager")
    try:
        if capman is not None:
            with capman.global_and_fixture_disabled():
                print("\n[e2e] building the control-plane binaries once (cached in ~/.cache/kiln-testbin)")
                testbin.ensure_binaries()
        else:
            testbin.ensure_binaries()
    except testbin.TestbinUnavailable as exc:
        config.stash[_UNAVAILABLE] = str(exc)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    reason = request.config.stash.get(_UNAVAILABLE, None)
    if reason is not None:
        pytest.skip(f"control-plane binaries unavailable: {reason.splitlines()[0]}")
    if os.geteuid() != 0 and not os.environ.get("KILN_DEV_KUBECONFIG"):
        pytest.skip("the e2e cluster runs its node agent as the user 'builder': run the suite as root")
    yield from start_session_cluster()


@pytest.fixture(scope="session")
def kube_api(cluster: Cluster) -> KubeApi:
    return cluster.api()


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Any:
    return cluster.client()


@pytest.fixture
def namespace(kube_api: KubeApi) -> Iterator[str]:
    name = create_namespace(kube_api)
    yield name
    delete_namespace(kube_api, name)


@pytest.fixture(scope="session")
def cluster_busybox(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    image = make_busybox_oci_layout(tmp_path_factory.mktemp("e2e-busybox"))
    push_with_skopeo(image.layout, cluster.registry, "e2e/busybox:latest")
    return cluster.image("e2e/busybox:latest")


@pytest.fixture(scope="session")
def builder_image(cluster: Cluster) -> str:
    return session_builder_image(cluster)


@pytest.fixture(scope="session")
def installed(cluster: Cluster, cluster_busybox: str) -> e2e.Installed:
    return e2e.install(cluster, cluster_busybox)


@pytest.fixture(scope="session")
def ctl(installed: e2e.Installed) -> Iterator[e2e.ControllerProcess]:
    proc = e2e.controller(installed)
    yield proc
    e2e.stop_controller()
    if proc.unexpected_exits:  # the supervisor restarted it, as a kubelet would; say so at the end of the run
        warnings.warn(f"the e2e controller exited unasked and was restarted: {'; '.join(proc.unexpected_exits)} (log: {proc.log_path})", stacklevel=1)


@pytest.fixture
def k(cluster: Cluster) -> Kube:
    return Kube(cluster.client())
