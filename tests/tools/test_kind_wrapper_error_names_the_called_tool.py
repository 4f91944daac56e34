"""Kind: a tool that delegates to its plan reported a bad argument under the plan's name (fuse_norm_act('x') said
'plan_fuse_norm_act: ...'), so the message named a function the user never called. Every tool taking a model names
itself."""

import pytest

from normlab import tools

CALLS = {
    "fold_batchnorm": lambda: tools.fold_batchnorm("x"),
    "plan_fold": lambda: tools.plan_fold("x"),
    "fuse_norm_act": lambda: tools.fuse_norm_act("x"),
    "plan_fuse_norm_act": lambda: tools.plan_fuse_norm_act("x"),
    "convert_norm": lambda: tools.convert_norm("x", "bn"),
    "freeze": lambda: tools.freeze("x"),
    "unfreeze": lambda: tools.unfreeze("x"),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_kind_wrapper_error_names_the_called_tool(name):
    with pytest.raises(TypeError, match=rf"^{name}: expected a torch\.nn\.Module, got str$"):
        CALLS[name]()
