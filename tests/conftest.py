"""The test session's model cache: built models (tiny-t5, a converted SmolLM2) go to a temporary
folder removed at the end, never to the user's ~/.cache/bidir or $BIDIR_CACHE. Set in the
environment, so that the runs tests start in subprocesses use it too."""
import os
import shutil
import tempfile

_CACHE = tempfile.mkdtemp(prefix="bidir-test-cache-")


def pytest_configure(config):
    os.environ["BIDIR_CACHE"] = _CACHE


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)
