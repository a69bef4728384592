from __future__ import annotations

import pytest

from tests.cli.buildkit import BuilderWorkspace
from tests.fixtures.rootless import Rootless


@pytest.fixture
def ws(rootless: Rootless) -> BuilderWorkspace:
    return BuilderWorkspace(rootless, rootless.builder_tmpdir("ws-"))
