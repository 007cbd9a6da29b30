import os

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _environment():
    """Every test starts from the same environment variables: a test (or an in-process ``main()``,
    which sets MOSAICS_SHARED_DATA for its workers) cannot leak one into the next."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
