"""Fixtures of the end-to-end tests."""

import pytest

from .bbc_data import write_bbc_small


@pytest.fixture(scope="module")
def bbc_small(tmp_path_factory):
    """36 train / 10 validation / 16 test BBC articles, two topics."""
    return write_bbc_small(tmp_path_factory.mktemp("bbc"), (18, 5, 8))
