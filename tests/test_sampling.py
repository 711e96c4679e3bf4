import numpy as np
from hypothesis import given, settings, strategies as st

from benchmark.data.sampling import TwoStreamSchedule


@settings(max_examples=60, deadline=None)
@given(n_l=st.integers(1, 40), n_u=st.integers(1, 60), lbs=st.integers(1, 12), ubs=st.integers(0, 12),
       seed=st.integers(0, 2**16), step=st.integers(0, 500))
def test_batches_are_labeled_first_then_unlabeled(n_l, n_u, lbs, ubs, seed, step):
    s = TwoStreamSchedule(n_l, n_u, lbs, ubs, seed)
    batch = s.batch(step)
    assert len(batch) == lbs + ubs
    assert np.all((0 <= batch[:lbs]) & (batch[:lbs] < n_l))
    assert np.all((n_l <= batch[lbs:]) & (batch[lbs:] < n_l + n_u))
    if n_l >= lbs:
        assert len(set(batch[:lbs].tolist())) == lbs  # no repeats inside a labeled batch
    np.testing.assert_array_equal(batch, TwoStreamSchedule(n_l, n_u, lbs, ubs, seed).batch(step))  # pure in (seed, step)


@settings(max_examples=30, deadline=None)
@given(n_l=st.integers(2, 50), lbs=st.integers(1, 8), seed=st.integers(0, 1000))
def test_a_labeled_epoch_never_repeats_an_index(n_l, lbs, seed):
    s = TwoStreamSchedule(n_l, 5, lbs, 1, seed)
    if n_l < lbs:
        return
    epoch = np.concatenate([s.labeled(k) for k in range(s.batches_per_epoch)])
    assert len(epoch) == (n_l // lbs) * lbs
    assert len(set(epoch.tolist())) == len(epoch)


def test_unlabeled_stream_covers_every_index_once_per_pass():
    s = TwoStreamSchedule(3, 10, 1, 5, seed=7)
    first_pass = np.concatenate([s.unlabeled(0), s.unlabeled(1)])
    assert sorted(first_pass.tolist()) == list(range(3, 13))


def test_seeds_differ():
    a = np.concatenate([TwoStreamSchedule(20, 20, 4, 4, 0).batch(k) for k in range(5)])
    b = np.concatenate([TwoStreamSchedule(20, 20, 4, 4, 1).batch(k) for k in range(5)])
    assert not np.array_equal(a, b)
