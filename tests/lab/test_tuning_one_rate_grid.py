"""Kind: a one-rate learning-rate grid has no step to extend by, so a search over it cannot say whether its rate is
censored; it must be refused when declared (not reported as ``censored: false``), and no claim declares one."""

from __future__ import annotations

import pytest

from normlab.lab.claims import all_claims
from normlab.lab.tuning import Search


def test_one_rate_grid_is_refused_with_what_was_expected_and_what_arrived():
    with pytest.raises(ValueError, match=r"Search: grid must hold at least 2 rates .* got \(0\.1,\)"):
        Search(grid=(0.1,))
    assert Search(grid=(0.1, 1.0)).grid == (0.1, 1.0)


def _grids(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if "grid" in str(k).lower() and isinstance(v, (list, tuple)):
                yield f"{path}/{k}", v
            yield from _grids(v, f"{path}/{k}")


def test_one_rate_grid_is_declared_by_no_claim_at_any_level():
    one = [(c.id, level, p, g) for c in all_claims() for level, cfg in c.configs.items()
           for p, g in _grids(dict(cfg)) if len(g) < 2]
    assert one == []
