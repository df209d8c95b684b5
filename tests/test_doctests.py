"""The examples in docstrings are run, so they cannot drift from the code."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["hpcsnp.cv", "hpcsnp.train", "hpcsnp.data", "hpcsnp.resources"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
