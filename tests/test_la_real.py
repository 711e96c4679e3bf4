"""Real LA (UA-MT layout) found through BENCH_DATA_ROOT; skipped with the reason where absent.
CI unpacks it from ../shared/data/packs/LA (see .ci/run)."""
import dataclasses

import numpy as np
import pytest
import torch

from benchmark import catalog
from benchmark.data.dataset import card_reader, open_splits
from benchmark.evaluate import make_inferer
from benchmark.nets import build_network
from benchmark.run.local import run_local
from benchmark.run.trials import expand
from conftest import la_root, requires_la

pytestmark = requires_la


@pytest.fixture(scope="module")
def card():
    return catalog.get_card("la")


def test_lists_equal_the_pinned_public_split_and_labeled_scans_are_the_first_rows(card):
    splits = open_splits(card, la_root())     # also checks that all 100 files exist
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 0, 20)
    assert splits.train[0] == "06SR5RBREL16DQ6M8LWS"
    assert [splits.labeled_rows(card.labeled.patients(k, "t")) for k in ("5%", "10%", "20%")] == [4, 8, 16]


def test_volumes_read_as_one_channel_z_scored_images_with_binary_labels(card):
    splits = open_splits(card, la_root())
    reader = card_reader(card, splits.root)
    for name in (splits.train[0], splits.test[0]):
        case = reader.read_eval(name)
        assert case.image.dtype == np.float32 and case.image.ndim == 4 and case.image.shape[0] == 1
        assert case.image.shape[1:] == case.label.shape and case.label.shape[2] == 88
        # z-scored over the whole scan BEFORE UA-MT's crop around the atrium, so the crop's mean is not 0
        assert np.isfinite(case.image).all() and 0.3 < float(case.image.std()) < 3.0
        assert set(np.unique(case.label)) == {0, 1}


def test_the_card_sliding_window_labels_every_voxel_of_a_real_volume(card):
    splits = open_splits(card, la_root())
    case = card_reader(card, splits.root).read_eval(splits.test[0])
    inferer = make_inferer(card.evaluation, (112, 112, 80))
    net = build_network("vnet", 1, 2, width=4).eval()
    labels = inferer(net, case.image, torch.device("cpu"))
    assert labels.shape == case.label.shape and labels.dtype == np.uint8
    x, y, z = case.label.shape
    windows = [int(np.ceil((s - p) / t)) + 1 for s, p, t in zip((x, y, z), (112, 112, 80), (18, 18, 4))]
    assert len(inferer.corners(case.image.shape[1:])) == np.prod(windows)


@pytest.mark.slow
def test_one_supervised_step_on_real_la_scores_one_test_volume(tmp_path):
    suite = catalog.get_suite("la-5pct")
    suite = dataclasses.replace(suite, train={**suite.train, "network_options": {"width": 4}, "num_workers": 0,
                                              "batch_size": 2})
    (trial,) = expand(suite, methods=["supervised"], seeds=[0], iterations=1, data_root=la_root(), test_cases=1)
    (outcome,) = run_local([trial], tmp_path, None, la_root(), "cpu", progress=False)
    assert outcome.status == "FINISHED", outcome.detail
    assert 0.0 <= outcome.summary["test/last/dice"] <= 1.0
