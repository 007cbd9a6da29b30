import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton's interpreter runs the GPU kernels on CPU tensors (tests/test_leaky_triton.py); Triton reads
    # this when it is first imported, so it is set before any test module can import it.
    os.environ.setdefault("TRITON_INTERPRET", "1")


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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared CPU: one thread is faster than several and makes timings stable
    (a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder with ``c.txt``: 200 short documents for tiny trainings."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "c.txt").write_text("\n\n".join(f"the cat {i} sat on the mat by the door" for i in range(200)))
    return d
