"""Real ACDC (SSL4MIS layout) found through BENCH_DATA_ROOT; skipped with the reason where absent."""
import numpy as np
import pytest

from benchmark import catalog
from benchmark.data.dataset import load_dataset, open_splits
from conftest import acdc_root, requires_acdc

pytestmark = requires_acdc


@pytest.fixture(scope="module")
def card():
    return catalog.get_card("acdc")


def test_labeled_patients_to_slices(card):
    splits = open_splits(card, acdc_root())
    assert len(splits.train) == 1312 and len(splits.val) == 20 and len(splits.test) == 40
    assert splits.labeled_rows(1) == 32
    assert splits.labeled_rows(3) == 68
    assert splits.labeled_rows(7) == 136
    assert splits.labeled_rows(70) == 1312


def test_paper_names_resolve_to_the_same_patients(card):
    rule = card.labeled
    assert rule.patients("3%", "t") == rule.patients("5%", "t") == 3   # AdvMIM "3%" == SemSim/CML "5%"
    assert rule.patients("10%", "t") == 7


def test_reader_opens_every_slice_and_volume(card):
    data = load_dataset(card, acdc_root())
    assert len(data.train_images) == 1312 and len(data.val) == 20 and len(data.test) == 40
    labels = set()
    for lab in data.train_labels:
        labels |= set(np.unique(lab).tolist())
    for vol in data.val + data.test:
        assert vol.image.shape[1:] == vol.label.shape and vol.image.shape[0] == 1 and vol.label.ndim == 3
        labels |= set(np.unique(vol.label).tolist())
    assert labels == {0, 1, 2, 3}
    assert all(0.0 <= img.min() and img.max() <= 1.0 for img in data.train_images[:50])
