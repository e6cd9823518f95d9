"""Shared fixtures; the helpers behind them live in tiny.py."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tiny import RandomTokens, tiny_bert  # noqa: E402


@pytest.fixture
def bert12():
    return tiny_bert(num_layers=12)


@pytest.fixture
def token_dataset():
    return RandomTokens()
