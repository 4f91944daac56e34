"""Kind: a new registration must never reuse seeds already run. After block 100..104 is registered, a run with
--seeds 10 from it (100..109, exploratory) uses seeds above the block; the next registration must start clear of
them (the next hundred), and the status reason's rerun advice names both --first-seed and --seeds."""

from __future__ import annotations

from normlab.lab import protocol as P
from normlab.lab.claims import get_claim


def test_seed_block_reuse_next_registration_starts_on_the_next_hundred(tmp_path):
    reg_path = tmp_path / "PROTOCOLS.json"
    c = get_claim("careless-init")
    reg = P.register([c], "tiny", 5, reg_path)
    assert reg["protocols"][c.id]["tiny"]["seeds"] == list(range(100, 105))
    # someone runs --seeds 10 from the registered first seed: 100..109 (exploratory: the seed count changed)
    run = P.default_seeds(c, "tiny", 10, 1, reg)
    assert run == list(range(100, 110))
    st = P.status(c, "tiny", run, reg)
    assert st["status"] == P.EXPLORATORY
    assert "--first-seed 100 --seeds 5" in st["status_reason"]
    reg = P.register([c], "tiny", 5, reg_path)
    block = reg["protocols"][c.id]["tiny"]["seeds"]
    assert block == list(range(200, 205)) and not set(block) & set(run)
    # a long block moves the next default past its end too
    reg = P.register([c], "tiny", 150, reg_path, first_seed=300)
    assert P.register([c], "tiny", 5, reg_path)["protocols"][c.id]["tiny"]["seeds"][0] == 500
