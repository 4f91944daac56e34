"""Kind: the protocol hash's code digest must follow what the code does, not how it is written: reformatting,
comments and docstrings leave it; a semantic change in the training procedure (train.py, models.py, data.py) or
the verdict machinery changes it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from normlab.lab import protocol as P
from normlab.lab.claims import get_claim

LAB = Path(P.__file__).resolve().parent


@pytest.fixture
def lab_copy(tmp_path, monkeypatch):
    """A copy of the lab's machinery the digest reads (P reads the files next to its own __file__)."""
    for rel in P._MACHINERY:
        dest = tmp_path / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(LAB / rel, dest)
    monkeypatch.setattr(P, "__file__", str(tmp_path / "protocol.py"))
    return tmp_path


def _digest():
    return P.protocol(get_claim("careless-init"), "tiny", 1)["code"]


def test_code_digest_ignores_formatting_comments_and_docstrings(lab_copy):
    before = _digest()
    f = lab_copy / "train.py"
    src = f.read_text()
    # a comment, blank lines, a changed module docstring, a re-wrapped expression
    f.write_text(src.replace('"""', '"""Reworded. ', 1).replace("\n\n\n", "\n\n\n# a comment added\n\n\n", 1)
                 + "\n\n# trailing comment\n")
    v = lab_copy / "verdict.py"
    v.write_text(v.read_text().replace("_REF_SIMS = 200_000", "_REF_SIMS = (\n    200_000\n)  # reformatted"))
    assert f.read_text() != src
    assert _digest() == before


def test_code_digest_changes_with_the_training_procedure(lab_copy):
    before = _digest()
    for rel in ("train.py", "models.py", "data.py"):
        assert rel in P._MACHINERY
    f = lab_copy / "train.py"
    f.write_text(f.read_text() + "\n_EXTRA_STEP = 1\n")
    assert _digest() != before


def test_code_digest_changes_with_a_verdict_constant(lab_copy):
    before = _digest()
    v = lab_copy / "verdict.py"
    v.write_text(v.read_text().replace("_REF_SIMS = 200_000", "_REF_SIMS = 100_000"))
    assert _digest() != before


def test_code_digest_normalizes_docstrings_of_functions_and_classes():
    a = b'def f(x):\n    """Doc."""\n    return x + 1\n\nclass C:\n    """Doc."""\n'
    b = b'def f(x):  # comment\n    """Other doc,\n    two lines."""\n    return (x\n            + 1)\n\n\nclass C:\n    pass\n'
    assert P._normalized_source(a, "a.py") == P._normalized_source(b, "b.py")
    assert P._normalized_source(a, "a.py") != P._normalized_source(a.replace(b"+ 1", b"+ 2"), "a.py")
