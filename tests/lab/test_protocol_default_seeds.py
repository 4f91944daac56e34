"""Confirmatory runs by default once registered: without --first-seed, a claim runs on the seed block
preregistered for it at that level (0.. when none is); an explicit first seed wins; the page and results.json say
which seeds were used and why."""

from __future__ import annotations

import json

import pytest

from normlab.lab import protocol as P
from normlab.lab.claims import get_claim
from normlab.lab.report import run_claims

CLAIM = "careless-init"


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    path = tmp_path / "PROTOCOLS.json"
    monkeypatch.setattr(P, "REGISTRY", path)
    return path


def _run(tmp_path, **kw):
    out = tmp_path / "out"
    results, paths = run_claims([CLAIM], level="tiny", out_dir=str(out), log=lambda s: None, progress="none", **kw)
    return results[0], paths


def test_default_seeds_are_the_registered_block_and_the_run_is_confirmatory(tmp_path, registry):
    P.register([get_claim(CLAIM)], "tiny", 1, first_seed=137)
    r, paths = _run(tmp_path)
    assert r.seeds == [137]
    data = json.loads(paths["json"].read_text())
    claim = data["claims"][0]
    assert claim["seeds"] == [137] and claim["status"] == P.CONFIRMATORY
    assert "preregistered for this claim at level tiny" in claim["seed_reason"]
    assert "seeds 137..137: the fresh block preregistered" in paths["html"].read_text()
    assert "seeds 137..137: the fresh block preregistered" in paths["md"].read_text()


def test_default_seeds_without_a_registration_are_exploratory_from_zero(tmp_path, registry):
    r, paths = _run(tmp_path)
    assert r.seeds == [0]
    claim = json.loads(paths["json"].read_text())["claims"][0]
    assert claim["status"] == P.EXPLORATORY and "exploratory default" in claim["seed_reason"]


def test_default_seeds_an_explicit_first_seed_wins(tmp_path, registry):
    P.register([get_claim(CLAIM)], "tiny", 1, first_seed=137)
    r, paths = _run(tmp_path, first_seed=0)
    assert r.seeds == [0]
    claim = json.loads(paths["json"].read_text())["claims"][0]
    assert claim["status"] == P.EXPLORATORY and "not the block preregistered" in claim["seed_reason"]


def test_default_seeds_count_and_level_of_the_registration():
    c = get_claim(CLAIM)
    reg = {"protocols": {CLAIM: {"quick": {"seeds": [200, 201, 202, 203, 204], "n_seeds": 5}}}}
    assert P.default_seeds(c, "quick", None, 5, reg) == [200, 201, 202, 203, 204]
    assert P.default_seeds(c, "quick", 2, 5, reg) == [200, 201]  # explicit count: same first seed
    assert P.default_seeds(c, "full", None, 10, reg) == list(range(10))  # not registered at this level
    assert P.default_seeds(c, "full", 3, 10, reg) == [0, 1, 2]
