"""Shared fixtures: the tiny preset and its components, built once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def tiny_config():
    from engines.config import preset

    return preset("tiny")


@pytest.fixture(scope="session")
def staged(tiny_config):
    """The in-process chain of the three engines over one set of tiny components."""
    from engines.staged_pipeline import StagedPipeline

    return StagedPipeline(tiny_config)


@pytest.fixture(scope="session")
def reference_pipeline(staged):
    """diffusers' own LTX2Pipeline over the very same modules."""
    return staged.components.pipeline()
