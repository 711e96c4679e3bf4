"""The n-dimensional spine end to end: 3D and RGB cards, their suites, and everything refused before training."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from benchmark import catalog
from benchmark.cli import app
from benchmark.config import ConfigError, TrainConfig, load_card, parse_card
from benchmark.data.dataset import load_dataset
from benchmark.run.trials import expand
from benchmark.train import Trainer

runner = CliRunner()


def demo3d(**train):
    suite = catalog.get_suite("demo-3d")
    return dataclasses.replace(suite, train={**suite.train, **train})


# ------------------------------------------------------------------------------------ refused at expand time
def test_all_means_the_methods_of_the_cards_dimensionality():
    trials = expand(dataclasses.replace(catalog.get_suite("demo-3d"), methods="all"), seeds=[0])
    assert {t.method for t in trials} == {"supervised", "mean-teacher", "ua-mt", "urpc", "mc-net", "mc-net-plus",
                                          "ss-net", "bcp", "cml", "sassnet", "dtc", "caml", "mcf",
                                          "dk-uxnet"}   # the LA methods
    assert "cct" in catalog.expand_method_names(["all"], 2) and "cct" not in catalog.expand_method_names(["all"], 3)


def test_a_2d_only_method_on_a_3d_card_is_refused_by_name():
    with pytest.raises(ConfigError, match="cct trains in 2D only and the card is 3D"):
        expand(catalog.get_suite("demo-3d"), methods=["cct"], seeds=[0])


@pytest.mark.parametrize("train, message", [
    ({"patch_size": 32}, r"expected 3 positive integers for a 3D card \(got \[32, 32\]; a single integer stands for a 2D square"),
    ({"patch_size": [40, 40, 40]}, r"supervised trains network 'vnet' on patch \[40, 40, 40\], but every patch axis "
                                   r"must be a multiple of 16"),
    ({"network": "unet"}, r"'unet' on patch \[32, 32, 32\], but it is a 2D network"),
    ({"augmentation": "ssl4mis-2021"}, r"augmentation: 'ssl4mis-2021' is a 2D rule .* valid for 3D: la-rotflip-crop"),
    ({"network": "patch-discriminator"}, "not a segmentation network"),
])
def test_trainer_settings_that_cannot_train_the_card_are_refused(train, message):
    with pytest.raises(ConfigError, match=message):
        expand(demo3d(**train), methods=["supervised"], seeds=[0])


def test_method_requirements_are_checked_when_the_suite_expands(tiny_card):
    suite = dataclasses.replace(catalog.get_suite("demo"), dataset=str(tiny_card))
    with pytest.raises(ConfigError, match=r"cct builds its own network and accepts network 'unet' only"):
        expand(dataclasses.replace(suite, train={**suite.train, "network": "swin-unet"}), methods=["cct"], seeds=[0])
    with pytest.raises(ConfigError, match="fixmatch: variant must be paper or ssl4mis"):
        expand(dataclasses.replace(suite, method_config={"fixmatch": {"variant": "nope"}}), methods=["fixmatch"],
               seeds=[0])
    with pytest.raises(ConfigError, match="bcp: this method pairs images .* both be >= 2"):
        expand(dataclasses.replace(suite, train={**suite.train, "batch_size": 3, "labeled_batch_size": 2}),
               methods=["bcp"], seeds=[0])
    with pytest.raises(ConfigError, match="needs unlabeled images in every batch"):
        expand(dataclasses.replace(suite, train={**suite.train, "batch_size": 4, "labeled_batch_size": 4}),
               methods=["mean-teacher"], seeds=[0])
    with pytest.raises(ConfigError, match="ctct trains network 'swin-unet' on patch \\[48, 48\\]"):
        expand(dataclasses.replace(suite, train={**suite.train, "patch_size": 48}), methods=["ctct"], seeds=[0])


def test_an_int_patch_is_a_2d_square_and_shapes_are_tuples():
    assert TrainConfig(patch_size=64).patch_size == (64, 64)
    assert TrainConfig(patch_size=[32, 32, 16]).patch_size == (32, 32, 16)


def test_a_card_without_val_cannot_select_on_val(tmp_path):
    raw = yaml.safe_load((Path(__file__).parent.parent / "datasets" / "la.yaml").read_text())
    raw["evaluation"]["checkpoint"] = "best_val"
    with pytest.raises(ConfigError, match="best_val needs a validation split but val_split is null"):
        parse_card(raw, tmp_path / "la.yaml")
    raw["evaluation"].update(checkpoint="last", inference="slicewise")
    with pytest.raises(ConfigError, match="slicewise feeds a 2D network but the card's spatial_dims is 3"):
        parse_card(raw, tmp_path / "la.yaml")


def test_lists_in_the_root_must_equal_the_pinned_copies(tmp_path):
    from benchmark.data.dataset import open_splits

    card = catalog.get_card("la")
    root = tmp_path / "LA"
    ids = [ln for ln in (Path(card.path).parent / "splits/la/train.list").read_text().split()]
    root.mkdir()
    (root / "train.list").write_text("\n".join(ids[1:2] + ids[:1] + ids[2:]) + "\n")   # two rows swapped
    (root / "test.list").write_text((Path(card.path).parent / "splits/la/test.list").read_text())
    with pytest.raises(ConfigError, match=r"train list \(train.list\) differs from the pinned copy .* \(row 1: "):
        open_splits(card, tmp_path)


# --------------------------------------------------------------------------------------- 3D end to end
@pytest.mark.slow
def test_supervised_vnet_learns_the_synthetic_atrium(tmp_path):
    """A narrow V-Net, 2 labeled volumes per step at 32^3, on 3 labeled scans: well above chance within a CPU budget."""
    (trial,) = expand(demo3d(iterations=100, eval_every=100, checkpoint_every=100), methods=["supervised"], seeds=[0])
    data = load_dataset(trial.card)
    result = Trainer(data, catalog.method_class("supervised"), catalog.method_class("supervised").Config(),
                     trial.train, trial.labeled_rows, 0, tmp_path, trial.protocol, trial.card.classes,
                     device="cpu", progress=False).fit()
    foreground = np.mean([(c.label > 0).mean() for c in data.test])
    chance = 2 * foreground / (1 + foreground)   # Dice of predicting everything as atrium
    assert set(result.summary) == {"last"}        # no val split: no best-on-val checkpoint
    assert result.summary["last"]["dice"] > max(0.5, 4 * chance)


def test_smoke_runs_score_fewer_cases_and_are_tagged(tmp_path):
    (trial,) = expand(demo3d(iterations=1), methods=["supervised"], seeds=[0], test_cases=1)
    assert trial.resolved()["test_cases"] == 1
    (full,) = expand(demo3d(iterations=1), methods=["supervised"], seeds=[0])
    assert "test_cases" not in full.resolved() and full.config_hash != trial.config_hash
    from benchmark.run.local import run_local, tags_of

    assert tags_of(trial, "cpu")["smoke_test_cases"] == "1"
    (outcome,) = run_local([trial], tmp_path, None, None, "cpu", progress=False)
    assert outcome.status == "FINISHED", outcome.detail
    cases = tmp_path.glob("**/cases_last.csv")
    import pandas as pd

    assert pd.read_csv(next(cases))["case"].nunique() == 1


# ------------------------------------------------------------------------------------- RGB image folders
def isic_like_root(tmp_path: Path, n: int = 12) -> Path:
    """A folder laid out as the ISIC 2018 Task 1 download, filled with the synthetic skin images."""
    from benchmark.data.synthetic_images import ImageSpec, ensure_images

    src = ensure_images(tmp_path / "skin", ImageSpec(seed=3, size=48, images=n))
    root = tmp_path / "data" / "ISIC2018"
    (root / "ISIC2018_Task1-2_Training_Input").mkdir(parents=True)
    (root / "ISIC2018_Task1_Training_GroundTruth").mkdir()
    for i, image in enumerate(sorted((src / "images").glob("*.jpg"))):
        mask = src / "masks" / image.name.replace(".jpg", "_segmentation.png")
        (root / "ISIC2018_Task1-2_Training_Input" / f"ISIC_{i:07d}.jpg").write_bytes(image.read_bytes())
        (root / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_{i:07d}_segmentation.png").write_bytes(mask.read_bytes())
    return root.parent


def test_an_isic_layout_trains_supervised_and_fixmatch_from_a_card_alone(tmp_path, monkeypatch):
    data_root = isic_like_root(tmp_path)
    card = yaml.safe_load((Path(__file__).parent.parent / "datasets" / "isic.yaml").read_text())
    card.update(name="isic-mini", splits={"train": {"from": 0, "to": 8}, "test": {"from": 8, "to": 12}},
                labeled={"unit": "case", "aliases": {"25%": 2}})
    card_path = tmp_path / "isic-mini.yaml"
    card_path.write_text(yaml.safe_dump(card))
    suite = tmp_path / "isic-mini-suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "isic-mini", "dataset": str(card_path), "labeled": ["25%"], "methods": ["supervised", "fixmatch"],
        "seeds": [0], "train": {"iterations": 2, "batch_size": 4, "labeled_batch_size": 2, "patch_size": 32,
                                "augmentation": "image-2d", "eval_every": 2, "checkpoint_every": 2, "log_every": 1,
                                "num_workers": 0}}))
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(app, ["run", "--suite", str(suite), "--data-root", str(data_root), "--no-track",
                              "--executor", "local", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "2 finished, 0 skipped, 0 failed" in out.output
    loaded = load_card(card_path)
    assert loaded.in_channels == 3 and loaded.evaluation.inference == "whole_image"


@pytest.mark.slow
def test_supervised_unet_learns_the_synthetic_rgb_lesions(tmp_path):
    suite = catalog.get_suite("demo-rgb")
    (trial,) = expand(dataclasses.replace(suite, train={**suite.train, "iterations": 150, "eval_every": 150}),
                      methods=["supervised"], seeds=[0])
    data = load_dataset(trial.card)
    assert data.train_images[0].shape[0] == 3
    result = Trainer(data, catalog.method_class("supervised"), catalog.method_class("supervised").Config(),
                     trial.train, trial.labeled_rows, 0, tmp_path, trial.protocol, trial.card.classes,
                     device="cpu", progress=False).fit()
    assert result.summary["best_val"]["dice"] > 0.6


def test_bench_ls_networks_lists_every_registered_net_with_its_constraints():
    from benchmark.nets import NETWORKS

    out = runner.invoke(app, ["ls", "networks"])
    assert out.exit_code == 0, out.output
    for name in NETWORKS.names():
        assert name in out.output
    assert "3D, patch axes multiple of 16" in out.output   # vnet
    assert NETWORKS.get("vnet").problem((112, 112, 80)) is None
    assert "multiple of 16" in NETWORKS.get("vnet").problem((112, 112, 81))
