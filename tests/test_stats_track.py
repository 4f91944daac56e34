"""_stats.track: the one running-average step (momentum, cumulative average, counter), against closed forms."""

import pytest
import torch

from normlab import _stats


def _batches(k, c=3, n=7):
    g = torch.Generator().manual_seed(5)
    return [torch.randn(n, c, generator=g, dtype=torch.float64) * (i + 1) + i for i in range(k)]


def test_track_momentum_matches_closed_form():
    xs = _batches(4)
    rm, rv, counter = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), torch.tensor(0)
    em, ev = rm.clone(), rv.clone()
    for x in xs:
        _stats.track(rm, rv, counter, _stats.moments(x, (0,)), momentum=0.3)
        em = 0.7 * em + 0.3 * x.mean(0)
        ev = 0.7 * ev + 0.3 * x.var(0, unbiased=True)
    torch.testing.assert_close(rm, em)
    torch.testing.assert_close(rv, ev)
    assert int(counter) == 4


def test_track_cumulative_average_is_the_mean_of_the_batches():
    xs = _batches(5)
    rm, rv, counter = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), torch.tensor(0)
    for x in xs:
        _stats.track(rm, rv, counter, _stats.moments(x, (0,)), momentum=None, running_var_unbiased=False)
    torch.testing.assert_close(rm, torch.stack([x.mean(0) for x in xs]).mean(0))
    torch.testing.assert_close(rv, torch.stack([x.var(0, unbiased=False) for x in xs]).mean(0))
    assert int(counter) == 5


def test_track_empty_statistics_change_nothing():
    rm, rv, counter = torch.zeros(3), torch.ones(3), torch.tensor(2)
    _stats.track(rm, rv, counter, _stats.moments(torch.empty(0, 3), (0,)), momentum=None)
    assert int(counter) == 2 and bool((rm == 0).all()) and bool((rv == 1).all())


@pytest.mark.parametrize("momentum", [-0.1, 1.5])
def test_track_bad_momentum_raises_before_anything_changes(momentum):
    rm, rv, counter = torch.zeros(3), torch.ones(3), torch.tensor(0)
    with pytest.raises(ValueError, match=r"layer: momentum must lie in \[0, 1\]"):
        _stats.track(rm, rv, counter, _stats.moments(torch.randn(4, 3), (0,)), momentum=momentum, name="layer")
    assert int(counter) == 0 and bool((rm == 0).all())


def test_track_cumulative_average_needs_a_counter():
    with pytest.raises(ValueError, match="needs num_batches_tracked"):
        _stats.track(torch.zeros(3), torch.ones(3), None, _stats.moments(torch.randn(4, 3), (0,)), momentum=None)
