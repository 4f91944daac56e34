"""Kind: a refactor changing a public report's dataclass layout. FoldReport and FuseReport share their summary
through ``RewriteReport``; the fields they had before (their order: positional construction, ``repr``,
``dataclasses.astuple``) must stay as they were, so a caller's ``FoldReport(folded)`` still means what it did."""

import dataclasses

from normlab.tools import FoldReport, FuseReport


def test_kind_report_compat_field_order():
    assert [f.name for f in dataclasses.fields(FoldReport)] == ["folded", "skipped", "traced", "untraced"]
    assert [f.name for f in dataclasses.fields(FuseReport)] == ["fused", "skipped", "rewritten", "traced",
                                                                 "untraced", "pairs"]


def test_kind_report_compat_positional_construction_and_text():
    fold = FoldReport([("conv", "bn")], [("bn2", "no conv before it")])
    assert fold.folded == [("conv", "bn")] and fold.skipped == [("bn2", "no conv before it")]
    assert repr(fold).startswith("FoldReport(folded=[('conv', 'bn')], skipped=[('bn2', 'no conv before it')]")
    assert str(fold).splitlines() == ["fold: 1 of 2 batch-norm layers folded", "  folded  bn into conv",
                                      "  skipped bn2: no conv before it"]
    fuse = FuseReport([("bn", "relu")], [], [""], ["", "block"], [("head", "TraceError: x")])
    assert fuse.fused == [("bn", "relu")] and fuse.rewritten == [""] and fuse.traced == ["", "block"]
    assert str(fuse).splitlines() == ["fuse_norm_act: 1 of 1 batch-norm layers fused with their activation",
                                      "  fused   bn + relu", "  forward rewritten (torch.fx GraphModule): <model>",
                                      "  not traceable with torch.fx: head (TraceError: x)"]
