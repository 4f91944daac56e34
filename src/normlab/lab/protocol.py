"""Preregistration of the claims' protocols.

A claim's *protocol* at a level is everything declared before its runs: its rules (metric, arms, kind, direction,
margin, confidence, confirmatory flag), the configuration of that level (arms, budgets, learning rates, grids), the
verdict seeds, and a digest of the code that makes the runs and turns them into a verdict (the claim's own file, the
shared claim machinery ``claims/base.py``, ``claims/_common.py``, ``verdict.py``, ``tuning.py``, ``probes.py`` and
the training procedure ``train.py``, ``models.py``, ``data.py``; each as its parse tree without docstrings, so
reformatting, comments and docstrings do not change it, any change in what the code does does), and the
declared rule of the learning-rate search (how a censored grid is extended: cap and hard bounds). Its SHA-256
over canonical JSON is the claim's ``protocol_hash``.

*Fresh seeds.* Exploratory runs use verdict seeds ``0 .. n-1``. A registration declares the seed block of the
confirmatory run, ``first_seed .. first_seed + n - 1`` with ``first_seed`` in ``[100, 1000)`` (tuning seeds start
at 1000), by default on the next hundred clear of the block registered before for that claim and level (blocks
100.., 200.., 300..: a later run of more seeds from the registered first seed, e.g. ``--seeds 10`` over a 5-seed
block, stays inside its hundred, so the next registration never reuses seeds already run); the run then uses them
(``normlab claims --first-seed N --seeds n``). A claim is confirmatory only when its run used exactly the registered
seeds, so results that existed before the registration (other seeds) can never be relabelled confirmatory by it.

The registry ``claims/PROTOCOLS.json`` (committed in the repository) holds the hashes that were *preregistered*:
written only by an explicit :func:`register` (``python -m normlab.lab.protocol --register``), never during a run.
At report time :func:`status` compares a claim's current hash with the registered one:

- ``confirmatory``: the protocol is exactly the one registered, so the verdict tests a prediction fixed before
  these results existed (the registration must precede the confirmatory run on fresh seeds);
- ``exploratory``: no protocol is registered for the claim at this level, or it changed since (the reason names
  the parts that changed: rules, configuration, seed count, code), so its verdict may have been shaped by results
  and needs a confirmatory rerun.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

__all__ = ["REGISTRY", "protocol", "protocol_hash", "load_registry", "register", "status", "default_seeds",
           "seed_reason", "CONFIRMATORY", "EXPLORATORY"]

REGISTRY = Path(__file__).resolve().parent / "claims" / "PROTOCOLS.json"
CONFIRMATORY = "confirmatory"
EXPLORATORY = "exploratory"
_FORMAT = 1
_PARTS = ("rules", "config", "search", "n_seeds", "seeds", "code")
FRESH_SEEDS = (100, 1000)  # where registered (confirmatory) seed blocks live: above exploratory, below tuning seeds
BLOCK_STRIDE = 100  # default blocks start at multiples of this, clear of every seed of the block registered before
# The code that turns runs into a verdict, besides the claim's own file (paths relative to normlab/lab).
# The training procedure modules (what a run does: model, data, training loop) are part of it too.
_MACHINERY = ("claims/base.py", "claims/_common.py", "verdict.py", "tuning.py", "probes.py", "train.py", "models.py",
              "data.py")


def _normalized_source(src: bytes, name: str) -> bytes:
    """The code of a module with formatting, comments and docstrings removed: ``ast.dump`` of its parse tree with
    every docstring dropped, so only a change in what the code does changes the protocol hash. A file that does
    not parse is hashed as its raw bytes (it cannot run either)."""
    try:
        tree = ast.parse(src, filename=name)
    except SyntaxError:
        return src
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=True, include_attributes=False).encode()


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _code_digest(claim) -> str:
    """SHA-256 of the normalized source (:func:`_normalized_source`) of the module defining the claim's ``run`` plus
    the shared claim machinery and training procedure (:data:`_MACHINERY`)."""
    module = sys.modules.get(getattr(claim.run, "__module__", "") or "")
    path = getattr(module, "__file__", None)
    h = hashlib.sha256()
    if path and Path(path).is_file():
        h.update(_normalized_source(Path(path).read_bytes(), str(path)))
    else:
        h.update(b"unavailable")
    lab = Path(__file__).resolve().parent
    for rel in _MACHINERY:
        f = lab / rel
        h.update(rel.encode())
        h.update(_normalized_source(f.read_bytes(), rel) if f.is_file() else b"absent")
    return h.hexdigest()


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    return list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]


def protocol(claim, level: str, seeds: int | Sequence[int]) -> dict[str, Any]:
    """The claim's protocol at ``level`` with verdict ``seeds`` (a list, or a count ``n`` meaning ``0 .. n-1``), as
    plain JSON data (what is hashed)."""
    seeds = _seed_list(seeds)
    if level not in claim.configs:
        raise ValueError(f"protocol: claim {claim.id!r} has no configuration for level {level!r}")
    rules = [{"role": "primary", **asdict(claim.rule)}]
    rules += [{"role": "confirmatory" if r.confirmatory else "secondary", **asdict(r)} for r in claim.secondary]
    return {"claim": claim.id, "level": level, "n_seeds": len(seeds), "seeds": seeds, "rules": rules,
            "config": json.loads(json.dumps(dict(claim.configs[level]), sort_keys=True, default=str)),
            "search": _search_rule(), "code": _code_digest(claim)}


def _search_rule() -> dict[str, Any]:
    """The declared learning-rate search rule every claim's tuning follows: how a censored grid is extended
    (cap, hard bounds, rule). A claim's own grid, budget and seeds are in its configuration."""
    from .tuning import EXTEND, EXTENSION_RULE, LR_BOUNDS

    return {"extend": EXTEND, "bounds": list(LR_BOUNDS), "extension_rule": EXTENSION_RULE}


def _part_digests(proto: Mapping[str, Any]) -> dict[str, str]:
    return {k: _digest(proto[k]) for k in _PARTS}


def protocol_hash(proto: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a :func:`protocol` over canonical JSON (sorted keys, no whitespace)."""
    return _digest(dict(proto))


def load_registry(path: str | Path | None = None) -> dict[str, Any]:
    """The registry at ``path`` (default :data:`REGISTRY`, read when called) as data; an absent file is an empty
    registry. A damaged file raises ``ValueError``."""
    p = Path(REGISTRY if path is None else path)
    if not p.exists():
        return {"format": _FORMAT, "protocols": {}}
    try:
        data = json.loads(p.read_text())
    except ValueError as exc:
        raise ValueError(f"protocol registry {p}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("protocols"), dict):
        raise ValueError(f"protocol registry {p}: expected an object with a 'protocols' object")
    return data


def _fresh_block(entry: Mapping[str, Any] | None, n_seeds: int, first_seed: int | None) -> list[int]:
    lo, hi = FRESH_SEEDS
    if first_seed is None:
        # the next hundred above the block registered before, not its next seed: runs with more seeds from the
        # registered first seed (exploratory) use the seeds just above it, which a new block must not reuse
        prev = (entry or {}).get("seeds", [])
        first_seed = lo if not prev else (max(prev) // BLOCK_STRIDE + 1) * BLOCK_STRIDE
    block = list(range(int(first_seed), int(first_seed) + int(n_seeds)))
    if block[0] < lo or block[-1] >= hi:
        raise ValueError(f"--first-seed: a registered seed block must lie in [{lo}, {hi}) (below: exploratory seeds, "
                         f"from {hi}: tuning seeds), got {block[0]}..{block[-1]}")
    used = set((entry or {}).get("seeds", [])) | set((entry or {}).get("earlier_seeds", []))
    if used & set(block):
        raise ValueError(f"--first-seed: seeds {sorted(used & set(block))} were registered before; a new registration "
                         f"needs fresh seeds")
    return block


def register(claims: Sequence, level: str, n_seeds: int, path: str | Path | None = None,
             note: str = "", first_seed: int | None = None) -> dict[str, Any]:
    """Record the current protocol hash of each claim at ``level`` with ``n_seeds`` fresh seeds in the registry.

    This is the preregistration: run it (and commit the file) *before* the confirmatory run, never after looking
    at that run's results. The seeds are a block in :data:`FRESH_SEEDS` starting at ``first_seed`` (default: the
    next multiple of :data:`BLOCK_STRIDE` above the claim's previously registered block); the confirmatory run
    must use them (``normlab claims --first-seed X --seeds N``). Other claims and levels in the file are kept.
    Returns the updated registry. Raises ValueError for a block outside :data:`FRESH_SEEDS` or overlapping any
    block registered before.
    """
    reg = load_registry(path)
    reg["format"] = _FORMAT
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    blocks = {c.id: _fresh_block(reg["protocols"].get(c.id, {}).get(level), n_seeds, first_seed) for c in claims}
    for c in claims:
        proto = protocol(c, level, blocks[c.id])
        old = reg["protocols"].get(c.id, {}).get(level) or {}
        entry = {"hash": protocol_hash(proto), "parts": _part_digests(proto), "n_seeds": int(n_seeds),
                 "seeds": blocks[c.id], "registered": stamp}
        earlier = sorted({*old.get("earlier_seeds", []), *old.get("seeds", [])})
        if earlier:  # every block registered before, so none is ever registered again
            entry["earlier_seeds"] = earlier
        if note:
            entry["note"] = note
        reg["protocols"].setdefault(c.id, {})[level] = entry
    p = Path(REGISTRY if path is None else path)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(reg, indent=1, sort_keys=True) + "\n")
    tmp.replace(p)
    return reg


def status(claim, level: str, seeds: int | Sequence[int],
           registry: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"protocol_hash", "status", "status_reason", "protocol"}`` of a claim run with verdict ``seeds`` (a list,
    or a count meaning ``0 .. n-1``) against the registry."""
    reg = load_registry() if registry is None else registry
    proto = protocol(claim, level, seeds)
    n_seeds = proto["n_seeds"]
    h = protocol_hash(proto)
    entry = reg.get("protocols", {}).get(claim.id, {}).get(level)
    if entry is None:
        st, why = EXPLORATORY, (f"no protocol of {claim.id!r} at level {level!r} is preregistered in "
                                f"claims/PROTOCOLS.json, so nothing shows the rules were fixed before the results")
    elif entry.get("hash") == h:
        st, why = CONFIRMATORY, (f"the protocol (rules, margins, configuration, claim code) and its {n_seeds} fresh "
                                 f"seeds ({_span(proto['seeds'])}) are the ones preregistered on "
                                 f"{entry.get('registered', '?')}")
    else:
        parts = entry.get("parts", {})
        now = _part_digests(proto)
        changed = [k for k in _PARTS if parts.get(k) != now[k]]
        reg_seeds = entry.get("seeds") or []
        rerun = (f"rerun with --first-seed {reg_seeds[0]} --seeds {len(reg_seeds)}" if reg_seeds else
                 "register again")
        what = {"rules": "the rules or margins", "config": "the configuration (arms, budgets)",
                "search": "the learning-rate search rule (grid extension cap or bounds)",
                "n_seeds": f"the seed count (registered {entry.get('n_seeds')}, run {n_seeds}; {rerun})",
                "seeds": f"the seeds (registered {_span(reg_seeds)}, run {_span(proto['seeds'])}; {rerun})",
                "code": "the claim's code"}
        listed = ", ".join(what[k] for k in changed) or "the protocol"
        st, why = EXPLORATORY, (f"{listed} changed since the protocol was preregistered on "
                                f"{entry.get('registered', '?')}; a confirmatory verdict needs the registered "
                                "protocol or a new registration followed by a rerun on fresh seeds")
    return {"protocol_hash": h, "status": st, "status_reason": why, "protocol": proto}


def default_seeds(claim, level: str, n_seeds: int | None, default_n: int,
                  registry: Mapping[str, Any] | None = None) -> list[int]:
    """The verdict seeds of a run given no ``--first-seed``: the block preregistered for ``claim`` at ``level``
    when there is one (so a run after ``--register`` is confirmatory by default), else ``0 .. n-1``.

    ``n_seeds`` is the requested count (None: the registered block's count, else ``default_n``); a count other
    than the registered one keeps the registered first seed (the status then names the changed seed count).
    """
    reg = load_registry() if registry is None else registry
    entry = reg.get("protocols", {}).get(claim.id, {}).get(level)
    block = [int(x) for x in (entry or {}).get("seeds", [])]
    if not block:
        n = default_n if n_seeds is None else int(n_seeds)
        return list(range(n))
    n = len(block) if n_seeds is None else int(n_seeds)
    return list(range(block[0], block[0] + n))


def seed_reason(claim, level: str, seeds: Sequence[int], registry: Mapping[str, Any] | None = None) -> str:
    """One sentence: which verdict seeds a run used and why (the registered block, exploratory 0.., or chosen)."""
    reg = load_registry() if registry is None else registry
    entry = reg.get("protocols", {}).get(claim.id, {}).get(level)
    seeds = [int(x) for x in seeds]
    block = [int(x) for x in (entry or {}).get("seeds", [])]
    span = _span(seeds)
    if block and seeds == block:
        return (f"seeds {span}: the fresh block preregistered for this claim at level {level} on "
                f"{entry.get('registered', '?')} (the default once a protocol is registered)")
    if block:
        return (f"seeds {span}: not the block preregistered for this claim at level {level} ({_span(block)}); "
                f"chosen with --first-seed/--seeds, so the run cannot be confirmatory")
    if seeds and seeds[0] == 0:
        return (f"seeds {span}: the exploratory default (no protocol of this claim is preregistered at level "
                f"{level}, so no fresh block exists)")
    return (f"seeds {span}: chosen with --first-seed (no protocol of this claim is preregistered at level "
            f"{level})")


def _span(seeds: Sequence[int]) -> str:
    seeds = list(seeds)
    if not seeds:
        return "none"
    return f"{seeds[0]}..{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else str(seeds)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m normlab.lab.protocol --register [--level L] [--seeds N] [--only ID ...]``."""
    ap = argparse.ArgumentParser(prog="python -m normlab.lab.protocol",
                                 description="preregister the claims' protocols (writes claims/PROTOCOLS.json)")
    ap.add_argument("--register", action="store_true", help="record the current protocol hashes")
    ap.add_argument("--level", default="quick", choices=("quick", "full", "tiny"))
    ap.add_argument("--seeds", type=int, default=None, help="seed count of the confirmatory run (default: the "
                    "level's default)")
    ap.add_argument("--first-seed", type=int, default=None, help="first seed of the confirmatory run's fresh block "
                    "(default: the next hundred above the block registered before: 100, 200, ...)")
    ap.add_argument("--only", nargs="*", default=None, help="claim ids (default: all)")
    ap.add_argument("--registry", default=None, help=f"registry file (default: {REGISTRY})")
    args = ap.parse_args(argv)
    from .claims import all_claims, get_claim
    from .claims.base import DEFAULT_SEEDS

    try:
        claims = [get_claim(i) for i in args.only] if args.only else all_claims()
        n = DEFAULT_SEEDS[args.level] if args.seeds is None else args.seeds
        if n < 1:
            raise ValueError(f"--seeds must be a positive integer, got {n}")
        if not args.register:
            reg = load_registry(args.registry)
            for c in claims:  # the seeds `normlab claims` would use by default: the registered block, if any
                seeds = default_seeds(c, args.level, args.seeds, DEFAULT_SEEDS[args.level], reg)
                s = status(c, args.level, seeds, reg)
                print(f"{c.id:24s} {s['status']:13s} {s['protocol_hash'][:12]}  {s['status_reason']}")
            return 0
        reg = register(claims, args.level, n, args.registry, first_seed=args.first_seed)
    except ValueError as exc:
        print(f"normlab protocol: {exc}", file=sys.stderr)
        return 2
    firsts = sorted({reg["protocols"][c.id][args.level]["seeds"][0] for c in claims})
    print(f"registered {len(claims)} protocol(s) at level {args.level} with {n} fresh seeds in "
          f"{args.registry or REGISTRY}; run them with: normlab claims --{args.level} --seeds {n} (each claim runs "
          f"on its registered block unless --first-seed is given; first seed per claim: "
          f"{', '.join(map(str, firsts))})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
