"""The test session's model cache: built models (tiny-t5, a converted SmolLM2) go to a temporary
folder removed at the end, never to the user's ~/.cache/bidir or $BIDIR_CACHE. Set in the
environment, so that the runs tests start in subprocesses use it too. And torch's thread count,
which a run trained in-process sets (rl_script_args.torch_threads), is restored after each test,
so that no test's numbers depend on which tests ran before it."""
import os
import shutil
import tempfile

import pytest
import torch

_CACHE = tempfile.mkdtemp(prefix="bidir-test-cache-")


def pytest_configure(config):
    os.environ["BIDIR_CACHE"] = _CACHE


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)


_THREADS = torch.get_num_threads()  # before any test: a module-scoped run may set it before a test starts


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    torch.set_num_threads(_THREADS)
    yield
    torch.set_num_threads(_THREADS)
