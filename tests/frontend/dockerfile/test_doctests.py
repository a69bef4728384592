"""The usage examples in the module docstrings must stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "kiln.frontend.dockerfile.shell",
    "kiln.frontend.dockerfile.parser",
    "kiln.frontend.dockerfile.dump",
    "kiln.frontend.dockerfile.instructions",
    "kiln.frontend.dockerfile.stages",
    "kiln.build.ignore",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0
