"""Kind: measurements that are bounds in the rule's favour (censored values) may refute a rule but never support
it: a claim lists the metric in ``Outcome.inconclusive`` and a would-be "supported" verdict (after Holm) becomes
inconclusive with the reason; other verdicts are untouched."""

from normlab.lab.claims.base import Outcome, _bounded, _verdict_for
from normlab.lab.verdict import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Rule

RULE = Rule(metric="m", treatment="a", control="b", direction="greater", margin=0.1)


def _outcome(gain):
    out = Outcome()
    for s in range(5):
        out.add("m", "a", s, 1.0 + gain + 0.01 * (s % 3))
        out.add("m", "b", s, 1.0)
    return out


def test_supported_on_bounds_in_the_rules_favour_becomes_inconclusive():
    out = _outcome(5.0)
    assert _verdict_for(RULE, out).verdict == SUPPORTED
    out.inconclusive["m"] = "seeds [3] censored below"
    v = _bounded(_verdict_for(RULE, out), out)
    assert v.verdict == INCONCLUSIVE and "censored below" in v.reason and v.effect is not None


def test_a_refutation_on_such_bounds_stands():
    out = _outcome(-5.0)
    out.inconclusive["m"] = "seeds [3] censored below"
    assert _bounded(_verdict_for(RULE, out), out).verdict == NOT_SUPPORTED
