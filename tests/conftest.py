"""Shared fixtures: where the shared test data lives, and how its absence is handled."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("SLIDESTREAM_SHARED_DATA")
    return Path(env) if env else _PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; skips (or fails under SLIDESTREAM_REQUIRE_SHARED_DATA=1) when absent."""
    path = _shared_data_dir()
    if not (path / "README.md").is_file():
        msg = f"shared test data not found at {path} (set SLIDESTREAM_SHARED_DATA)"
        if os.environ.get("SLIDESTREAM_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def slides_dir(shared_data: Path) -> Path:
    return shared_data / "slides"


@pytest.fixture(scope="session")
def cmu_slide(slides_dir: Path) -> Path:
    return slides_dir / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    the test machines are small and shared, small models run fastest on one thread, and OpenMP threads would spin
    against other jobs. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

