"""The worked examples in docstrings run, and fail when what they show changes."""

from __future__ import annotations

import doctest
from types import ModuleType

import pytest

from sentinel_stream.detect import detector


@pytest.mark.parametrize("module", [detector], ids=lambda m: m.__name__)
def test_docstring_examples(module: ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, "no example found"
    assert result.failed == 0
