"""Kind: a layer's training step under ``torch.compile(fullgraph=True)`` (no data-dependent Python value may leave
the graph), for every layer of the family, both kernel paths: output and every state_dict entry equal eager mode
over several steps. (The review found MABN missing from the earlier list of this kind.)"""

import copy

import pytest
import torch

from normlab import kernels
from normlab.nn import make_norm

SPECS = ["bn", "brn", "gbn:4", "mabn", "bln", "masked", "tbn:3", "gn:2", "ln", "in", "rms", "fn", "ran"]


@pytest.mark.parametrize("backend", ["native", "fast"])
@pytest.mark.parametrize("spec", SPECS)
def test_kind_compile_every_layer_matches_eager(spec, backend):
    if backend == "fast" and not kernels.numba_available():
        pytest.skip("numba is not installed: the fast path does not exist here")
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = make_norm(spec, 4).train().double()
    compiled_layer = copy.deepcopy(eager)
    shape = (8, 3, 4) if spec.startswith("tbn") else (8, 4, 3)  # tbn: (N, T, C) sequences
    xs = [torch.randn(*shape, dtype=torch.float64) * 2 + 1 for _ in range(3)]
    with kernels.backend(backend):
        compiled = torch.compile(compiled_layer, backend="aot_eager", fullgraph=True)
        for x in xs:
            torch.testing.assert_close(compiled(x), eager(x), rtol=1e-10, atol=1e-10)
    for (name, a), (_, b) in zip(eager.state_dict().items(), compiled_layer.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10, msg=f"{spec}: {name}")
