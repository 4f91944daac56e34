"""Issue 15, item 7: ``import normlab; normlab.tools`` works (PEP 562 ``__getattr__``), and ``import normlab``
alone loads neither the tools nor the lab."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import normlab

SRC = str(Path(normlab.__file__).resolve().parent.parent)


def _fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter (this one has imported half the package already); its stdout."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_normlab_loads_neither_tools_nor_lab_nor_bench():
    out = _fresh("import sys, normlab\n"
                 "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('normlab.')}))")
    loaded = eval(out)  # a printed list of names
    assert "nn" in loaded and "functional" in loaded and "reference" in loaded
    assert not {"tools", "lab", "bench", "cli"} & set(loaded), loaded


@pytest.mark.parametrize("name, attribute", [("tools", "fold_batchnorm"), ("lab", "__path__"),
                                             ("bench", "__path__"), ("kernels", "normalize"),
                                             ("nn", "BatchNorm2d"), ("functional", "batch_norm"),
                                             ("reference", "batch_norm_forward")])
def test_subpackages_are_attributes_of_the_package(name, attribute):
    out = _fresh(f"import sys, normlab\nm = normlab.{name}\n"
                 f"print(m is sys.modules['normlab.{name}'], hasattr(m, {attribute!r}))")
    assert out.split() == ["True", "True"]


def test_an_unknown_attribute_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        normlab.nope  # noqa: B018
    assert {"tools", "lab", "bench", "nn"} <= set(dir(normlab))
