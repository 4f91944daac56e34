"""The claims of the Batch Normalization literature that ``normlab claims`` tests.

One file per claim, each defining ``CLAIM`` (a :class:`~normlab.lab.claims.base.Claim`). The registry is the
package itself: every module here whose name does not start with ``_`` (and is not ``base``) is a claim, placed
in the report by the ``order`` it declares (or the number of its docstring, "Claim N, ..."). Adding a claim =
adding its file; no list of ids exists anywhere else.
"""

from __future__ import annotations

import pkgutil
import re
from functools import lru_cache
from importlib import import_module

from .base import Claim, ClaimResult, Context, Outcome, run_claim

__all__ = ["Claim", "ClaimResult", "Context", "Outcome", "run_claim", "all_claims", "get_claim", "claim_ids",
           "claim_modules"]

_NOT_CLAIMS = {"base"}


def claim_modules() -> list[str]:
    """Names of the claim modules of this package (every module but ``base`` and the ``_private`` ones)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_") and m.name not in _NOT_CLAIMS and not m.ispkg)


def _order(module) -> tuple[int, str]:
    claim = module.CLAIM
    if claim.order:
        return claim.order, claim.id
    m = re.match(r"\s*Claim\s+(\d+)\b", module.__doc__ or "")
    return (int(m.group(1)) if m else 10**6), claim.id


@lru_cache(maxsize=1)
def _registry() -> tuple[Claim, ...]:
    modules = []
    for name in claim_modules():
        module = import_module(f".{name}", __name__)
        if not isinstance(getattr(module, "CLAIM", None), Claim):
            raise TypeError(f"normlab.lab.claims.{name}: a claim module must define CLAIM = Claim(...); "
                            f"helpers shared by claims go in a module whose name starts with '_'")
        modules.append(module)
    claims = [m.CLAIM for m in sorted(modules, key=_order)]
    ids = [c.id for c in claims]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"normlab.lab.claims: claim id(s) {dup} are defined by more than one module")
    return tuple(claims)


def all_claims() -> list[Claim]:
    """Every claim of the package, in report order."""
    return list(_registry())


def claim_ids() -> list[str]:
    return [c.id for c in all_claims()]


def get_claim(claim_id: str) -> Claim:
    for c in all_claims():
        if c.id == claim_id:
            return c
    raise ValueError(f"normlab claims: unknown claim {claim_id!r}; valid ids: {', '.join(claim_ids())}")
