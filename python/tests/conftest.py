import os

import pytest


@pytest.fixture
def test_child():
    """The helper child binary (test/test_child.cpp): test init functions and writers."""
    path = os.environ.get("SHMCKPT_TEST_CHILD")
    if not path:
        pytest.skip("SHMCKPT_TEST_CHILD is not set (run the suite through ctest)")
    return path


def wait_for_file(path, timeout=30.0):
    """Polls for `path` (a file a child creates), failing after `timeout` seconds."""
    import time
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)
