"""Synapse and ISIC 2018: the TransUNet Synapse reader, TransUNet's empty-prediction rule and cubic resize, the
`synapse` / `isic` cards, their suites and leaderboard counts, and a 2-step training scored by the card's protocol.

Every fixture is written here, into tmp_path, in the prepared layouts (datasets/synapse.yaml, datasets/isic.yaml).
"""
import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import ndimage
from typer.testing import CliRunner

from benchmark import REPO_ROOT, catalog
from benchmark.cli import app
from benchmark.config import EMPTY_POLICIES as CARD_POLICIES
from benchmark.config import RESIZE, ConfigError, EvaluationProtocol, load_card, load_suite, parse_card
from benchmark.data.augment import AUGMENTATIONS, resize_cubic
from benchmark.data.dataset import load_dataset, open_splits
from benchmark.data.formats import open_reader
from benchmark.evaluate import rescore_cases, score_case
from benchmark.inference import RESIZE_MODES, build_inferer
from benchmark.metrics import EMPTY_POLICIES, case_metrics, mask_metrics
from benchmark.report import leaderboard as lbm
from benchmark.run.trials import expand

runner = CliRunner()
DATASETS = REPO_ROOT / "datasets"
SUITES = REPO_ROOT / "benchmark" / "suites"
NEW_SUITES = ("synapse-15pct", "synapse-30pct", "advmim-ablation-synapse", "isic-3pct", "isic-10pct",
              "semsim-ablation-isic")


# ------------------------------------------------------------------------------------------ fixtures
def organ_map(shape, seed: int) -> np.ndarray:
    """A label map with a few of the 8 organs as boxes (uint8)."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    h, w = shape[-2:]
    for organ in rng.choice(np.arange(1, 9), size=4, replace=False):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        label[..., y:y + 8, x:x + 8] = organ
    return label


def write_synapse(root: Path, train: dict[str, int], test: dict[str, int], size: int = 32) -> dict:
    """The TransUNet layout under root (= <data root>/Synapse): `train` case -> slices, `test` case -> depth.
    Returns what was written, by name."""
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    (root / "lists").mkdir()
    written, slices = {}, []
    for c, (case, depth) in enumerate(train.items()):
        for k in range(depth):
            name = f"{case}_slice{k:03d}"
            image = np.random.default_rng([c, k]).random((size, size)).astype(np.float32)
            label = organ_map((size, size), 100 * c + k)
            np.savez(root / "train_npz" / f"{name}.npz", image=image, label=label)
            written[name] = (image, label)
            slices.append(name)
    for c, (case, depth) in enumerate(test.items()):
        image = np.random.default_rng([9, c]).random((depth, size, size)).astype(np.float32)
        label = organ_map((depth, size, size), 7 + c)
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "w") as f:
            f["image"], f["label"] = image, label
        written[case] = (image, label)
    (root / "lists" / "train.txt").write_text("\n".join(slices) + "\n")
    (root / "lists" / "test_vol.txt").write_text("\n".join(test) + "\n")
    (root / "lists" / "all.lst").write_text("\n".join(f"{c}.npy.h5" for c in (*train, *test)) + "\n")
    return written


def fixture_card(tmp_path: Path, **changes) -> Path:
    """datasets/synapse.yaml as it is, minus the pinned lists (a fixture's lists are not TransUNet's), in tmp_path."""
    raw = yaml.safe_load((DATASETS / "synapse.yaml").read_text())
    raw.pop("pinned_lists")
    raw.update(changes)
    path = tmp_path / "synapse-mini.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def reader(root: Path):
    return open_reader("transunet-synapse", root, {}, 1, "test card")


# ------------------------------------------------------------------------------------------ reader
def test_reader_reads_slices_and_volumes_with_their_shapes_dtypes_and_values(tmp_path):
    root = tmp_path / "Synapse"
    written = write_synapse(root, {"case0031": 2, "case0007": 1}, {"case0008": 4, "case0022": 3})
    r = reader(root)
    case = r.read_train("case0031_slice001")
    assert case.image.shape == (1, 32, 32) and case.image.dtype == np.float32
    assert case.label.shape == (32, 32) and case.label.dtype == np.uint8
    np.testing.assert_array_equal(case.image[0], written["case0031_slice001"][0])
    np.testing.assert_array_equal(case.label, written["case0031_slice001"][1])
    vol = r.read_eval("case0022")
    assert vol.image.shape == (1, 3, 32, 32) and vol.label.shape == (3, 32, 32) and vol.label.dtype == np.uint8
    np.testing.assert_array_equal(vol.image[0], written["case0022"][0])
    np.testing.assert_array_equal(vol.label, written["case0022"][1])
    # the lists keep the file's order (TransUNet's order: labeled = the first rows), not a sorted one
    assert r.split_names("train", "lists/train.txt") == ["case0031_slice000", "case0031_slice001", "case0007_slice000"]
    assert r.split_names("test", "lists/test_vol.txt") == ["case0008", "case0022"]


def test_reader_errors_name_the_file_and_the_problem(tmp_path):
    root = tmp_path / "Synapse"
    write_synapse(root, {"case0031": 2}, {"case0008": 2})
    r = reader(root)
    bad = root / "train_npz" / "case0031_slice001.npz"
    np.savez(bad, img=np.zeros((32, 32), np.float32), label=np.zeros((32, 32), np.uint8))
    with pytest.raises(ConfigError, match=r"case0031_slice001\.npz: missing array\(s\) 'image'"):
        r.read_train("case0031_slice001")
    np.save(root / "train_npz" / "case0031_slice000.npy", np.zeros((32, 32)))
    (root / "train_npz" / "case0031_slice000.npy").rename(root / "train_npz" / "case0031_slice000.npz")
    with pytest.raises(ConfigError, match=r"case0031_slice000\.npz: holds a single array"):
        r.read_train("case0031_slice000")
    (root / "train_npz" / "case0031_slice000.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"case0031_slice000\.npz: cannot be read"):
        r.read_train("case0031_slice000")
    with pytest.raises(ConfigError, match=r"case0099_slice000\.npz: file not found"):
        r.read_train("case0099_slice000")
    with h5py.File(root / "test_vol_h5" / "case0008.npy.h5", "w") as f:
        f["img"] = np.zeros((2, 32, 32), np.float32)
    with pytest.raises(ConfigError, match=r"case0008\.npy\.h5: missing dataset 'image'"):
        r.read_eval("case0008")
    np.savez(bad, image=np.zeros((32, 32), np.float32), label=np.zeros((16, 32), np.uint8))
    with pytest.raises(ConfigError, match=r"case0031_slice001\.npz: image spatial shape \(32, 32\) differs"):
        r.read_train("case0031_slice001")


def test_a_missing_slice_and_a_label_outside_the_organs_stop_loading_with_the_file(tmp_path):
    root = tmp_path / "Synapse"
    write_synapse(root, {"case0031": 2, "case0007": 1}, {"case0008": 2})
    card = load_card(fixture_card(tmp_path))
    (root / "train_npz" / "case0007_slice000.npz").unlink()
    with pytest.raises(ConfigError, match=r"1 of 3 train file\(s\) named by lists/train.txt are missing, "
                                          r"e\.g\. .*train_npz/case0007_slice000\.npz"):
        open_splits(card, tmp_path)
    label = np.zeros((32, 32), np.uint8)
    label[3, 3] = 9   # the 8-organ map ends at 8
    np.savez(root / "train_npz" / "case0007_slice000.npz", image=np.zeros((32, 32), np.float32), label=label)
    with pytest.raises(ConfigError, match=r"case0007_slice000\.npz: label value 9 is outside the card's 9 classes"):
        load_dataset(card, tmp_path)


def test_the_real_card_refuses_lists_that_are_not_transunets(tmp_path):
    write_synapse(tmp_path / "Synapse", {"case0031": 2}, {"case0008": 2})
    with pytest.raises(ConfigError, match=r"differs from the pinned copy .*splits/synapse/train.txt"):
        open_splits(catalog.get_card("synapse"), tmp_path)


# ------------------------------------------------------------------------------------------ scoring rule
def test_transunet_policy_on_the_four_empty_nonempty_combinations():
    pred, ref, empty = np.zeros((6, 6), bool), np.zeros((6, 6), bool), np.zeros((6, 6), bool)
    pred[1:3, 1:3] = True          # 4 pixels
    ref[1:3, 1:4] = True           # 6 pixels, the pred plus one column
    # both non-empty: the normal values. Dice 2*4/10, Jaccard 4/6; every pixel of both is surface; pred->ref
    # distances are 0 (4 of them), ref->pred 0 (4) and 1 (the 2 pixels of column 3): hd95 = percentile 95 of
    # eight 0s and two 1s = 1, asd (pred->ref) = 0
    assert mask_metrics(pred, ref, "transunet") == pytest.approx({"dice": 0.8, "jaccard": 4 / 6, "hd95": 1.0, "asd": 0.0})
    # prediction on a class absent from the ground truth: Dice 1, HD95 0 (TransUNet); Jaccard 1, ASD 0
    assert mask_metrics(pred, empty, "transunet") == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
    # empty prediction, ground truth present: 0 / 0
    assert mask_metrics(empty, ref, "transunet") == {"dice": 0.0, "jaccard": 0.0, "hd95": 0.0, "asd": 0.0}
    # both empty: 0 / 0 (TransUNet's `else` branch)
    assert mask_metrics(empty, empty, "transunet") == {"dice": 0.0, "jaccard": 0.0, "hd95": 0.0, "asd": 0.0}
    # the other policies are untouched: zero_all scores a prediction on an absent class Dice 0, distances NaN
    assert mask_metrics(pred, empty, "zero_all")["dice"] == 0.0


def test_transunet_policy_through_label_maps_rescoring_and_every_list_of_policies():
    pred = np.array([[1, 1, 0], [0, 2, 0], [0, 0, 0]], np.uint8)
    ref = np.array([[1, 1, 0], [0, 0, 0], [3, 0, 0]], np.uint8)
    per_class = case_metrics(pred, ref, [1, 2, 3], policy="transunet", which=("dice", "hd95"))
    assert per_class == {1: {"dice": 1.0, "hd95": 0.0},   # identical masks
                         2: {"dice": 1.0, "hd95": 0.0},   # predicted, absent from the reference
                         3: {"dice": 0.0, "hd95": 0.0}}   # missed
    # re-scoring rows saved under `worst` gives exactly what scoring under transunet gives
    names = ["bg", "a", "b", "c", "d"]
    pred4 = np.pad(pred, 1)
    ref4 = np.pad(ref, 1)
    ref4[3, 3] = 4                       # class 4 present in both after the next line: the normal branch
    pred4[3, 3:5] = 4
    saved = pd.DataFrame(score_case("x", pred4, ref4, [1, 2, 3, 4], names, "worst", None))
    direct = pd.DataFrame(score_case("x", pred4, ref4, [1, 2, 3, 4], names, "transunet", None))
    pd.testing.assert_frame_equal(rescore_cases(saved, "transunet"), direct)
    # class 4: pred {(3,3), (3,4)}, ref {(3,3)}: Dice 2/3; pooled distances [0, 1] + [0]: percentile 95 = 0.9
    np.testing.assert_allclose(direct[["dice", "hd95"]].values, [[1, 0], [1, 0], [0, 0], [2 / 3, 0.9]], atol=1e-12)
    assert CARD_POLICIES == EMPTY_POLICIES and "transunet" in EMPTY_POLICIES and "transunet" in lbm.EMPTY_RULES
    EvaluationProtocol(classes=(1,), empty_prediction="transunet").validate("card", 2)
    assert "U = TransUNet's Synapse rule" in lbm.RULES_LEGEND


# ------------------------------------------------------------------------------------------ cubic resize
def predictor_logits(x: torch.Tensor) -> torch.Tensor:
    """3-class logits that depend on the pixel values: class k wins where the mean channel is nearest k / 2."""
    m = x.mean(1, keepdim=True)
    return torch.cat([-(m - k / 2) ** 2 for k in range(3)], 1)


def test_cubic_slicewise_is_scipy_zoom_order_3_in_and_order_0_out():
    image = np.random.default_rng(0).random((1, 3, 20, 28)).astype(np.float32)
    seen = []

    def predict(x):
        seen.append(x.clone())
        return predictor_logits(x)

    labels = build_inferer("slicewise", 32, resize="cubic")(predict, image, torch.device("cpu"))
    fed = torch.cat(seen).numpy()
    for k in range(3):
        zoomed = ndimage.zoom(image[0, k], (32 / 20, 32 / 28), order=3)
        np.testing.assert_allclose(fed[k, 0], zoomed, rtol=0, atol=1e-6)
        arg = predictor_logits(torch.from_numpy(zoomed[None, None].astype(np.float32))).argmax(1)[0].numpy()
        np.testing.assert_array_equal(labels[k], ndimage.zoom(arg.astype(np.uint8), (20 / 32, 28 / 32), order=0))
    assert labels.shape == (3, 20, 28) and labels.dtype == np.uint8
    # at the patch size nothing is zoomed (TransUNet skips the zoom then)
    same = build_inferer("slicewise", (20, 28), resize="cubic")(predict, image, torch.device("cpu"))
    np.testing.assert_array_equal(same, predictor_logits(torch.from_numpy(image[0][:, None])).argmax(1).numpy())


def test_cubic_whole_image_zooms_every_channel_with_order_3():
    image = np.random.default_rng(1).random((3, 24, 18)).astype(np.float32)
    labels = build_inferer("whole_image", 32, resize="cubic")(predictor_logits, image, torch.device("cpu"))
    zoomed = np.stack([ndimage.zoom(c, (32 / 24, 32 / 18), order=3) for c in image])
    arg = predictor_logits(torch.from_numpy(zoomed[None].astype(np.float32))).argmax(1)[0].numpy().astype(np.uint8)
    np.testing.assert_array_equal(labels, ndimage.zoom(arg, (24 / 32, 18 / 32), order=0))
    assert RESIZE == RESIZE_MODES and "cubic" in RESIZE


def test_transunet_augmentation_is_the_ssl4mis_2021_draws_with_an_order_3_image_zoom():
    image = np.random.default_rng(2).random((1, 20, 24)).astype(np.float32)
    label = organ_map((20, 24), 3)
    rule = AUGMENTATIONS.get("transunet")
    checked = set()
    for seed in range(40):
        draws = np.random.default_rng(seed)   # the draws of _draw_ssl4mis_2021, replayed
        if draws.random() > 0.5:
            k, axis = int(draws.integers(0, 4)), int(draws.integers(0, 2))
            img, lab = np.flip(np.rot90(image[0], k), axis), np.flip(np.rot90(label, k), axis)
            kind = "rot-flip"
        elif draws.random() > 0.5:
            continue                          # the small rotation: same code path as ssl4mis-2021
        else:
            img, lab, kind = image[0], label, "none"
        out_image, out_label = rule.sample(image, label, np.random.default_rng(seed), (32, 32))
        np.testing.assert_allclose(out_image[0], ndimage.zoom(img, (32 / img.shape[0], 32 / img.shape[1]), order=3),
                                   rtol=0, atol=1e-6)
        np.testing.assert_array_equal(out_label, ndimage.zoom(lab, (32 / lab.shape[0], 32 / lab.shape[1]), order=0))
        checked.add(kind)
    assert checked == {"rot-flip", "none"}
    # the label zoom (and the draws) are those of ssl4mis-2021: only the image interpolation differs
    a = AUGMENTATIONS.get("ssl4mis-2021").sample(image, label, np.random.default_rng(5), (32, 32))
    b = rule.sample(image, label, np.random.default_rng(5), (32, 32))
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(resize_cubic(image[0], (20, 24)), image[0])   # at the patch: no zoom


# ------------------------------------------------------------------------------------------ cards
def test_the_synapse_card():
    card = load_card(DATASETS / "synapse.yaml")
    assert card.name == "synapse" and card.format == "transunet-synapse" and card.root == "Synapse"
    assert card.classes == ("background", "spleen", "right_kidney", "left_kidney", "gallbladder", "liver",
                            "stomach", "aorta", "pancreas")   # SAMed's label map order
    assert card.labeled.patients("15%", "t") == 3 and card.labeled.patients("30%", "t") == 5
    ev = card.evaluation
    assert (ev.inference, ev.resize, ev.empty_prediction, ev.classes, ev.checkpoint, ev.val_split) == (
        "slicewise", "cubic", "worst", (1, 2, 3, 4, 5, 6, 7, 8), "last", None)
    assert "Licence" in card.citation
    # the pinned counts are those of TransUNet's train.txt: the first 3 / 5 / 18 cases
    names = (DATASETS / "splits" / "synapse" / "train.txt").read_text().split()
    cases = list(dict.fromkeys(n.split("_")[0] for n in names))
    assert len(names) == 2211 and len(cases) == 18
    for k, rows in card.labeled.table.items():
        assert sum(n.split("_")[0] in cases[:k] for n in names) == rows
    assert (DATASETS / "splits" / "synapse" / "test_vol.txt").read_text().split() == [
        "case0008", "case0022", "case0038", "case0036", "case0032", "case0002", "case0029", "case0003", "case0001",
        "case0004", "case0025", "case0035"]


def test_the_isic_card_reads_its_list_file_splits(tmp_path):
    card = load_card(DATASETS / "isic.yaml")
    assert card.name == "isic" and card.format == "image-folder" and card.in_channels == 3
    assert {k: card.labeled.patients(k, "t") for k in ("3%", "10%", "full")} == {"3%": 55, "10%": 181, "full": 1838}
    root = tmp_path / "ISIC2018"
    images, masks = root / card.reader["images"], root / card.reader["masks"]
    images.mkdir(parents=True), masks.mkdir(), (root / "splits").mkdir()
    from PIL import Image

    ids = [f"{i:07d}" for i in range(6)]
    for i in ids:
        Image.fromarray(np.full((10, 12, 3), 100, np.uint8)).save(images / f"ISIC_{i}.jpg")
        mask = np.zeros((10, 12), np.uint8)
        mask[2:5, 3:7] = 255
        Image.fromarray(mask).save(masks / f"ISIC_{i}_segmentation.png")
    (root / "splits" / "train.list").write_text("0000004\n0000001\n0000003\n0000000\n")  # a permuted order
    (root / "splits" / "test.list").write_text("0000002\n0000005\n")
    data = load_dataset(card, tmp_path)
    assert data.splits.train == ["0000004", "0000001", "0000003", "0000000"] and data.splits.test == ["0000002", "0000005"]
    assert data.train_images[0].shape == (3, 10, 12) and data.test[0].label.sum() == 12


# ------------------------------------------------------------------------------------------ suites
def touch_synapse_root(data_root: Path) -> None:
    """TransUNet's lists with empty files behind them: enough for expand (it checks that files exist)."""
    root = data_root / "Synapse"
    for d in ("train_npz", "test_vol_h5", "lists"):
        (root / d).mkdir(parents=True)
    for name in ("train.txt", "test_vol.txt", "all.lst"):
        (root / "lists" / name).write_bytes((DATASETS / "splits" / "synapse" / name).read_bytes())
    for n in (root / "lists" / "train.txt").read_text().split():
        (root / "train_npz" / f"{n}.npz").touch()
    for n in (root / "lists" / "test_vol.txt").read_text().split():
        (root / "test_vol_h5" / f"{n}.npy.h5").touch()


def touch_isic_root(data_root: Path) -> None:
    root = data_root / "ISIC2018"
    for d in ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth", "splits"):
        (root / d).mkdir(parents=True)
    ids = [f"{i:07d}" for i in range(2594)]
    for i in ids:
        (root / "ISIC2018_Task1-2_Training_Input" / f"ISIC_{i}.jpg").touch()
        (root / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_{i}_segmentation.png").touch()
    order = [ids[j] for j in np.random.default_rng(2018).permutation(len(ids))]
    (root / "splits" / "train.list").write_text("\n".join(order[:1838]) + "\n")
    (root / "splits" / "test.list").write_text("\n".join(sorted(order[1838:])) + "\n")


def table_methods(layout: str, setting: str) -> set[str]:
    """The registered methods of a leaderboard's rows that have a value for `setting`."""
    reported = {e["name"] for e in catalog.reported_only()}
    return {r.method for r in lbm.load(layout).rows if r.method and r.method not in reported and setting in r.values}


def test_the_new_suites_expand_with_the_papers_methods_counts_and_protocols(tmp_path):
    touch_synapse_root(tmp_path)
    touch_isic_root(tmp_path)
    expected = {"synapse-15pct": (405, table_methods("advmim-table2", "synapse-15")),
                "synapse-30pct": (653, table_methods("advmim-table2", "synapse-30")),
                "advmim-ablation-synapse": (405, {r.method for r in lbm.load("advmim-table1").rows}),
                "isic-3pct": (55, table_methods("advmim-table2", "isic-3") | table_methods("semsim-table2", "isic-3")),
                "isic-10pct": (181, table_methods("advmim-table2", "isic-10") | table_methods("semsim-table2", "isic-10")),
                "semsim-ablation-isic": (181, {"semsim"} | {f"semsim:n{n}" for n in (1, 2, 8, 14)}
                                         | table_methods("semsim-table6", "isic-10"))}
    for name in NEW_SUITES:
        suite = dataclasses.replace(load_suite(SUITES / f"{name}.yaml"), pretrained="none")
        trials = expand(suite, seeds=[0], data_root=tmp_path)
        rows, methods = expected[name]
        assert {t.labeled_rows for t in trials} == {rows}, name
        assert {t.method for t in trials} == methods, (name, {t.method for t in trials} ^ methods)
        by = {t.method: t for t in trials}
        for t in trials:
            assert (t.train.batch_size, t.train.labeled_batch_size, t.train.patch_size) == (16, 8, (224, 224)), name
        if name.startswith("synapse") or name.startswith("advmim"):
            assert all(t.train.augmentation == "transunet" and t.protocol.resize == "cubic"
                       and t.protocol.empty_prediction == "worst" for t in trials)
        if "advmim" in by:
            assert by["advmim"].train.lr == 0.05 and by["advmim"].train.iterations == 30000
        if name == "isic-3pct":
            assert by["semsim"].train.iterations == (1838 - 55) // 8 * 300 and by["ctct"].train.lr == 0.01
        if name == "isic-10pct":
            assert by["semsim"].train.iterations == (1838 - 181) // 8 * 300


def test_leaderboard_settings_carry_the_cards_pinned_counts():
    card = load_card(DATASETS / "synapse.yaml")
    seen = 0
    for lb in lbm.all_leaderboards():
        for s in lb.settings:
            if s.dataset == "synapse":
                assert s.count == card.labeled.patients(f"{s.id.split('-')[1]}%", lb.id), (lb.id, s.id)
                assert s.rows == card.labeled.table[s.count], (lb.id, s.id)
                seen += 1
            if s.dataset == "isic":
                assert s.count == load_card(DATASETS / "isic.yaml").labeled.patients(f"{s.id.split('-')[1]}%", lb.id)
    assert seen == 3   # advmim-table1 synapse-15, advmim-table2 synapse-15 / synapse-30
    # a run of the synapse-15pct suite (dataset tag = the card's name, labeled = the resolved case count) fills
    # the synapse-15 cell and no other; its cell says it was scored by TransUNet's rule (U) at the last checkpoint
    lb = lbm.load("advmim-table2")
    runs = pd.DataFrame([{"method": "ctct", "dataset": "synapse", "labeled": card.labeled.patients("15%", "t"),
                          "seed": s, "run_dir": "", "dice": 0.6 + s / 100, "jaccard": 0.5, "hd95": 40.0, "asd": 9.0,
                          "empty_prediction": "transunet", "checkpoint": "last", "rescored": False} for s in (0, 1)])
    row = lb.row("CTCT [15]")
    assert len(lbm.select_runs(runs, row, lb.setting("synapse-15"))) == 2
    assert lbm.select_runs(runs, row, lb.setting("synapse-30")).empty
    grid = lbm.build_grid(lb, runs)
    text = lbm.render(grid, "markdown", "both")
    assert "60.5" in text and "U/L" in text


def test_bench_table_fills_the_layouts_from_the_new_suites(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    touch_synapse_root(tmp_path)
    touch_isic_root(tmp_path)
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for layout, suites in (("advmim-table2", "synapse-15pct,synapse-30pct,isic-3pct,isic-10pct"),
                           ("advmim-table1", "advmim-ablation-synapse"),
                           ("semsim-table2", "isic-3pct,isic-10pct"),
                           ("semsim-table6", "semsim-ablation-isic")):
        out = runner.invoke(app, ["table", "--layout", layout, "--suite", suites, "--tracking-uri", uri])
        assert out.exit_code == 0, (layout, out.output)
        assert "Synapse" in out.output or "ISIC" in out.output or "isic" in out.output


# ------------------------------------------------------------------------------------------ end to end
def test_two_supervised_steps_on_a_synapse_fixture_are_scored_by_transunets_rule(tmp_path, monkeypatch):
    write_synapse(tmp_path / "Synapse", {"case0031": 2, "case0007": 1}, {"case0008": 4})
    card = fixture_card(tmp_path)
    suite = tmp_path / "synapse-mini-suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "synapse-mini", "dataset": str(card), "labeled": [1], "methods": ["supervised"], "seeds": [0],
        "train": {"iterations": 2, "batch_size": 2, "labeled_batch_size": 1, "patch_size": 32,
                  "augmentation": "transunet", "eval_every": 2, "checkpoint_every": 2, "log_every": 1,
                  "num_workers": 0},
        "protocol": {"empty_prediction": "transunet"}}))   # the card's default is worst; this reproduces TransUNet
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(app, ["run", "--suite", str(suite), "--data-root", str(tmp_path), "--no-track",
                                    "--executor", "local", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "1 finished, 0 skipped, 0 failed" in out.output
    (csv,) = list((tmp_path / "bench_runs").rglob("cases_last.csv"))
    rows = pd.read_csv(csv)
    assert rows["case"].tolist() == ["case0008"] * 8 and rows["class"].tolist() == list(range(1, 9))
    # TransUNet's rule on every row that has an empty side (computed from the voxel counts the rows carry)
    for r in rows.itertuples():
        if r.pred_voxels == 0:
            assert (r.dice, r.hd95) == (0.0, 0.0)
        elif r.ref_voxels == 0:
            assert (r.dice, r.hd95) == (1.0, 0.0)
        else:
            assert 0.0 <= r.dice <= 1.0 and r.hd95 >= 0.0
    assert parse_card(yaml.safe_load(card.read_text()), card).evaluation.resize == "cubic"
