from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from benchmark import catalog
from benchmark.config import ConfigError, TrainConfig, load_card, load_suite, stable_hash
from benchmark.data.dataset import load_dataset, open_splits

GOOD = yaml.safe_load((Path(__file__).parent.parent / "datasets" / "acdc.yaml").read_text())


def write_card(tmp_path: Path, **changes) -> Path:
    card = {**GOOD, **changes}
    card = {k: v for k, v in card.items() if v is not None}
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


def test_shipped_cards_load():
    for name in catalog.dataset_names():
        card = catalog.get_card(name)
        assert card.evaluation.classes == tuple(range(1, card.num_classes))   # every foreground class scored
        if card.format == "ssl4mis-h5":
            assert card.spatial_dims == 2
    assert catalog.get_card("acdc").num_classes == 4
    assert catalog.get_card("la").spatial_dims == 3 and not catalog.get_card("la").has_val


def test_missing_field_names_file_and_field(tmp_path):
    path = write_card(tmp_path, splits=None)
    with pytest.raises(ConfigError, match=r"card\.yaml: missing required field\(s\) splits"):
        load_card(path)


def test_unknown_field_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown field\\(s\\) colour.*valid fields"):
        load_card(write_card(tmp_path, colour="blue"))


def test_bad_empty_policy_names_the_choices(tmp_path):
    ev = {**GOOD["evaluation"], "empty_prediction": "ignore"}
    with pytest.raises(ConfigError, match="evaluation.empty_prediction: must be one of worst, zero_all, dice0_hd0, error"):
        load_card(write_card(tmp_path, evaluation=ev))


def test_mm_without_spacing_is_refused(tmp_path):
    ev = {**GOOD["evaluation"], "hd_units": "mm"}
    with pytest.raises(ConfigError, match="no spacing"):
        load_card(write_card(tmp_path, evaluation=ev))


def test_scored_class_outside_range(tmp_path):
    ev = {**GOOD["evaluation"], "classes": [1, 2, 7]}
    with pytest.raises(ConfigError, match="classes"):
        load_card(write_card(tmp_path, evaluation=ev))


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: malformed YAML"):
        load_card(path)


def test_missing_data_root_says_how_to_fix(tmp_path):
    card = load_card(write_card(tmp_path))
    with pytest.raises(ConfigError, match="BENCH_DATA_ROOT"):
        open_splits(card, tmp_path / "nowhere")


def _tiny_ssl4mis_tree(root: Path, bad_label: bool = False) -> None:
    (root / "data" / "slices").mkdir(parents=True)
    rows = []
    for p in (1, 2):
        for z in (1, 2):
            name = f"patient00{p}_frame01_slice_{z}"
            rows.append(name)
            with h5py.File(root / "data" / "slices" / f"{name}.h5", "w") as f:
                f["image"] = np.random.rand(16, 16).astype(np.float32)
                f["label"] = np.full((16, 16), 7 if bad_label and p == 2 else 1, np.uint8)
    (root / "train_slices.list").write_text("\n".join(rows))
    for split, pid in (("val", 3), ("test", 4)):
        name = f"patient00{pid}_frame01"
        with h5py.File(root / "data" / f"{name}.h5", "w") as f:
            f["image"] = np.random.rand(2, 16, 16).astype(np.float32)
            f["label"] = np.ones((2, 16, 16), np.uint8)
        (root / f"{split}.list").write_text(name + "\n")


def test_label_outside_classes_names_the_file(tmp_path):
    _tiny_ssl4mis_tree(tmp_path / "ACDC", bad_label=True)
    card = load_card(write_card(tmp_path, labeled={"table": {}, "aliases": {}}))
    with pytest.raises(ConfigError, match=r"patient002_frame01_slice_1\.h5: label value 7 is outside"):
        load_dataset(card, tmp_path)


def test_missing_file_named_in_list(tmp_path):
    _tiny_ssl4mis_tree(tmp_path / "ACDC")
    (tmp_path / "ACDC" / "data" / "patient004_frame01.h5").unlink()
    card = load_card(write_card(tmp_path, labeled={"table": {}, "aliases": {}}))
    with pytest.raises(ConfigError, match="missing, e.g. .*patient004_frame01.h5"):
        open_splits(card, tmp_path)


def test_labeled_table_is_checked_against_the_list(tmp_path):
    _tiny_ssl4mis_tree(tmp_path / "ACDC")
    card = load_card(write_card(tmp_path, labeled={"table": {1: 3}, "aliases": {}}))
    splits = open_splits(card, tmp_path)
    with pytest.raises(ConfigError, match="1 patients = 3 slices but .* gives 2"):
        splits.labeled_rows(1)


def test_suite_rejects_unknown_train_field(tmp_path):
    from benchmark.run.trials import expand

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "dataset": "synthetic-acdc", "labeled": [3], "methods": ["supervised"],
                                    "seeds": [0], "train": {"iterationz": 5}}))
    with pytest.raises(ConfigError, match="unknown field\\(s\\) iterationz"):
        expand(load_suite(path))


def test_suite_rejects_wrong_type(tmp_path):
    from benchmark.run.trials import expand

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "dataset": "synthetic-acdc", "labeled": [3], "methods": ["supervised"],
                                    "seeds": [0], "train": {"lr": "fast"}}))
    with pytest.raises(ConfigError, match="train.lr: expected float"):
        expand(load_suite(path))


def test_stable_hash_ignores_key_order_but_not_values():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_train_config_validation():
    with pytest.raises(ConfigError, match="labeled_batch_size"):
        TrainConfig(batch_size=4, labeled_batch_size=8).validate("t")


def test_method_train_overrides_one_method_only(tmp_path):
    from benchmark.run.trials import expand

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "dataset": "synthetic-acdc", "labeled": [3],
                                    "methods": ["supervised", "mean-teacher"], "seeds": [0],
                                    "train": {"iterations": 10, "lr": 0.01},
                                    "method_train": {"mean-teacher": {"lr_schedule": "constant", "lr": 0.05}}}))
    trials = {t.method: t for t in expand(load_suite(path), iterations=7)}
    assert trials["mean-teacher"].train.lr_schedule == "constant" and trials["mean-teacher"].train.lr == 0.05
    assert trials["supervised"].train.lr_schedule == "poly" and trials["supervised"].train.lr == 0.01
    assert trials["mean-teacher"].train.iterations == trials["supervised"].train.iterations == 7  # CLI wins
    path.write_text(yaml.safe_dump({"name": "s", "dataset": "synthetic-acdc", "labeled": [3], "methods": ["supervised"],
                                    "seeds": [0], "method_train": {"nope": {"lr": 1.0}}}))
    with pytest.raises(Exception, match="unknown method 'nope'"):
        expand(load_suite(path))


def test_method_presets_layer_between_the_methods_entry_and_their_own(tmp_path, monkeypatch):
    from benchmark.registry import UnknownNameError
    from benchmark.run.trials import expand
    from methods.cps import CPS

    monkeypatch.setattr(CPS, "presets", {"strong": {"consistency": 1.0, "consistency_rampup": 5.0}})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "dataset": "synthetic-acdc", "labeled": [3], "methods": ["cps", "cps:strong"], "seeds": [0],
        "method_config": {"cps": {"consistency": 0.3, "rampup_unit": 7}, "cps:strong": {"consistency_rampup": 9.0}},
        "method_train": {"cps": {"lr": 0.02}}}))
    trials = {t.method: t for t in expand(load_suite(path))}
    plain, strong = trials["cps"], trials["cps:strong"]
    assert (plain.method_config["consistency"], plain.method_config["rampup_unit"]) == (0.3, 7)
    assert strong.method_config["consistency"] == 1.0           # the preset beats the method's entry
    assert strong.method_config["rampup_unit"] == 7             # what the preset leaves alone comes from it
    assert strong.method_config["consistency_rampup"] == 9.0    # the variant's own entry wins
    assert strong.train.lr == plain.train.lr == 0.02
    assert plain.config_hash != strong.config_hash
    assert ("cps:strong", "preset: consistency=1.0, consistency_rampup=5.0") in catalog.describe("methods")
    with pytest.raises(UnknownNameError, match="strong"):
        expand(load_suite(path), methods=["cps:weak"])


def test_runs_of_swin_methods_are_tagged_with_their_pretrained_weights(tmp_path):
    from benchmark.run.local import tags_of
    from benchmark.run.trials import expand

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "dataset": "synthetic-acdc", "labeled": [3], "seeds": [0],
                                    "methods": ["ctct", "cps"], "train": {"patch_size": 224}}))
    trials = {t.method: t for t in expand(load_suite(path))}
    assert tags_of(trials["ctct"], "cpu")["pretrained"] == "none"
    assert "pretrained" not in tags_of(trials["cps"], "cpu")
    weights = tmp_path / "swin_tiny.pth"   # a FILE must exist when the suite is expanded
    weights.write_bytes(b"x")
    path.write_text(yaml.safe_dump({"name": "s", "dataset": "synthetic-acdc", "labeled": [3], "seeds": [0],
                                    "methods": ["ctct"], "method_config": {"ctct": {"pretrained": str(weights)}}}))
    assert tags_of(expand(load_suite(path))[0], "cpu")["pretrained"] == "swin_tiny.pth"


def test_all_inside_a_method_list_expands_to_every_registered_method(tmp_path):
    from benchmark.run.trials import expand

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "dataset": "synthetic-acdc", "labeled": [3], "seeds": [0],
                                    "methods": ["all", "dct:ssl4mis", "cps"]}))
    names = [t.method for t in expand(load_suite(path))]
    in_2d = [e.name for e in catalog.methods() if 2 in e.obj.dims]   # `all` on a 2D card skips the 3D-only ones
    assert names == [*in_2d, "dct:ssl4mis"] and "sassnet" not in names   # cps once, in registry order
