"""The lab's tests train small models: one torch thread is fastest on a shared machine (and restored after)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def student_t(monkeypatch):
    """Decide with Student's t critical values (``verdict.ROBUST_SHAPE = None``): for tests that check a claim's
    rules against an independent paired-t computation; the skew-robust critical values are tested in
    test_verdict_skew.py."""
    from normlab.lab import verdict

    monkeypatch.setattr(verdict, "ROBUST_SHAPE", None)
