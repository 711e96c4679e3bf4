"""Pretrained Swin-UNet weights (imagenet | none | FILE) and the bf16 record: values and the weights folder,
missing weights stopping a run at suite expansion (before any data is read), a weights file written here
loading into a method's Swin-UNet, the command line overriding the suite, `bench weights fetch` failing
clearly offline, run tags (precision follows `amp: off`), and the table captions that state both."""

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from benchmark import weights
from benchmark.cli import app
from benchmark.config import TrainConfig, load_suite
from benchmark.report import leaderboard as lbm
from benchmark.report.tables import label_cells, training_fields, training_note
from benchmark.run.trials import expand
from benchmark.track import training_tags
from benchmark.weights import MissingWeights

FILE = "swin_tiny_patch4_window7_224.pth"
TRAIN = {"iterations": 2, "batch_size": 4, "labeled_batch_size": 2, "patch_size": 32, "eval_every": 100,
         "checkpoint_every": 100, "log_every": 1, "num_workers": 0}


@pytest.fixture(autouse=True)
def wide_errors(monkeypatch):
    """Error messages on one line (rich would wrap long paths at 80 columns)."""
    from rich.console import Console

    import benchmark.cli as cli

    monkeypatch.setattr(cli, "err", Console(stderr=True, width=10_000))


@pytest.fixture()
def weights_dir(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    monkeypatch.setenv(weights.WEIGHTS_ENV, str(folder))
    return folder


def write_suite(path, card, **fields):
    path.write_text(yaml.safe_dump({"name": "w", "dataset": str(card), "labeled": [3], "seeds": [0],
                                    "methods": ["ctct"], "train": TRAIN, **fields}))
    return path


def timm_file(path):
    """A full-size state dict in timm's swin_tiny_patch4_window7_224 layout with random values."""
    import timm

    torch.manual_seed(3)
    state = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_values_resolve_in_the_weights_folder_and_a_missing_file_names_the_fix(weights_dir, tmp_path):
    assert [weights.normalise(v) for v in (None, "", "None", "ImageNet", "a/b.pth")] == \
        ["none", "none", "none", "imagenet", "a/b.pth"]
    assert weights.locate("imagenet") == weights_dir / FILE and weights.resolve("none") is None
    with pytest.raises(MissingWeights) as missing:
        weights.resolve("imagenet", "suite: ctct")
    text = str(missing.value)
    for part in (str(weights_dir / FILE), "`bench weights fetch swin-tiny`", "`--pretrained none`", "suite: ctct"):
        assert part in text
    with pytest.raises(MissingWeights, match=r"weights file .*own\.pth does not exist.*--pretrained none"):
        weights.resolve(tmp_path / "own.pth")
    (tmp_path / "own.pth").write_bytes(b"x")
    assert weights.resolve(str(tmp_path / "own.pth")) == tmp_path / "own.pth"
    assert [weights.tag_value(v) for v in ("imagenet", None, "/w/own.pth")] == ["imagenet", "none", "own.pth"]


def test_missing_weights_stop_expansion_before_any_data_is_read(weights_dir, tmp_path, tiny_card, monkeypatch):
    import benchmark.run.trials as trials_mod

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the weights were checked")

    monkeypatch.setattr(trials_mod, "open_splits", no_data)
    suite = write_suite(tmp_path / "s.yaml", tiny_card, pretrained="imagenet", methods=["supervised", "advmim"])
    with pytest.raises(MissingWeights, match=r"s\.yaml: advmim\.pretrained: 'imagenet' needs the ImageNet-1k"):
        expand(load_suite(suite))
    # a Swin-UNet trained by any method (train.network) is checked the same way
    suite = write_suite(tmp_path / "n.yaml", tiny_card, pretrained="imagenet", methods=["supervised"],
                        train={**TRAIN, "network": "swin-unet"})
    with pytest.raises(MissingWeights, match=r"train\.network_options\.pretrained"):
        expand(load_suite(suite))
    with pytest.raises(AssertionError, match="data was read"):   # weights not needed: expansion goes on
        expand(load_suite(write_suite(tmp_path / "s.yaml", tiny_card, pretrained="imagenet",
                                      methods=["supervised"])))


def test_suite_field_method_entry_and_command_line_precedence(weights_dir, tmp_path, tiny_card):
    own = tmp_path / "own.pth"
    own.write_bytes(b"x")
    suite = load_suite(write_suite(tmp_path / "s.yaml", tiny_card, pretrained="none", methods=["ctct", "advmim"],
                                   method_config={"advmim": {"pretrained": str(own)}}))
    got = {t.method: t.method_config["pretrained"] for t in expand(suite)}
    assert got == {"ctct": "none", "advmim": str(own)}          # the method's entry beats the suite field
    with pytest.raises(MissingWeights):                           # --pretrained imagenet wins over both
        expand(weights.override_suite(suite, "imagenet"))
    forced = weights.override_suite(suite, "None")
    assert forced.pretrained == "none" and "pretrained" not in forced.method_config["advmim"]
    assert {t.method_config["pretrained"] for t in expand(forced)} == {"none"}
    plain = load_suite(write_suite(tmp_path / "p.yaml", tiny_card))   # no field: the Config default, none
    assert expand(plain)[0].method_config["pretrained"] == "none"
    a, b = expand(plain)[0], expand(forced, methods=["ctct"])[0]
    assert a.config_hash == b.config_hash                         # none from the default or the CLI: one identity


@pytest.mark.slow
def test_a_weights_file_loads_into_the_trials_swin_unet_and_changes_what_it_should(weights_dir, tmp_path,
                                                                                   tiny_card):
    from benchmark import catalog
    from methods.base import MethodContext

    state = timm_file(weights_dir / FILE)
    trial = expand(load_suite(write_suite(tmp_path / "s.yaml", tiny_card, pretrained="imagenet",
                                          methods=["advmim"])))[0]
    assert trial.method_config["pretrained"] == "imagenet"
    cls = catalog.method_class("advmim")

    def build(cfg):
        torch.manual_seed(0)
        return cls(cls.make_config(cfg, "test"), MethodContext(1, 4, 10, "unet", lambda p: torch.optim.SGD(p, lr=0.1),
                                                               32))

    loaded, scratch = build(trial.method_config), build({**trial.method_config, "pretrained": "none"})
    net, ref = loaded.transformer, scratch.transformer
    assert net.pretrained == str(weights_dir / FILE) and ref.pretrained is None
    for mine, key in ((net.patch_embed.proj.weight, "patch_embed.proj.weight"),
                      (net.layers[2].blocks[1].attn.qkv.weight, "layers.2.blocks.1.attn.qkv.weight"),
                      (net.layers[3].downsample.reduction.weight, "layers.3.downsample.reduction.weight"),
                      (net.layers_up[2].blocks[0].mlp.fc1.weight, "layers.0.blocks.0.mlp.fc1.weight")):  # mirrored
        torch.testing.assert_close(mine, state[key])
    # what the reference leaves at its init is the same as from scratch (same seed): decoder expandings, head,
    # AdvMIM's mask tokens; the CNN is untouched
    for a, b in ((net.final_expand.expand.weight, ref.final_expand.expand.weight),
                 (net.output.weight, ref.output.weight), (net.mask_token, ref.mask_token), *zip(loaded.cnn.parameters(), scratch.cnn.parameters())):
        torch.testing.assert_close(a, b)
    # at a 32 patch the windows shrink, so Swin-T's 13x13 relative-position tables do not fit and are dropped
    assert any("relative_position_bias_table" in k for k in net.pretrained_report["unused"])
    assert not torch.equal(net.patch_embed.proj.weight, ref.patch_embed.proj.weight)


@pytest.mark.slow
def test_run_without_weights_stops_with_the_message_and_none_trains_tagged_and_tabled(weights_dir, tmp_path,
                                                                                      tiny_card, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner, uri = CliRunner(), f"sqlite:///{tmp_path / 'mlflow.db'}"
    suite = write_suite(tmp_path / "s.yaml", tiny_card, pretrained="imagenet")
    base = ["run", "--suite", str(suite), "--iterations", "2", "--executor", "local", "--device", "cpu",
            "--tracking-uri", uri]
    stopped = runner.invoke(app, base)
    assert stopped.exit_code == 2
    text = " ".join(stopped.output.split())
    assert "`bench weights fetch swin-tiny`" in text and "`--pretrained none`" in text and FILE in text
    assert not (tmp_path / "bench_runs").exists()                 # nothing trained, nothing written
    tune = runner.invoke(app, ["tune", "--suite", str(suite), "--method", "advmim", "--tracking-uri", uri])
    assert tune.exit_code == 2 and "`--pretrained none`" in tune.output   # bench tune: the same stop

    ran = runner.invoke(app, [*base, "--pretrained", "none"])
    assert ran.exit_code == 0, ran.output
    assert "1 finished" in ran.output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("w").experiment_id])
    assert run.data.tags["pretrained"] == "none" and run.data.tags["precision"] == "fp32"
    assert "pretrained_sha256" not in run.data.tags and run.data.params["method.pretrained"] == "none"
    table = runner.invoke(app, ["table", "--suite", str(suite), "--tracking-uri", uri, "--no-cost"])
    assert table.exit_code == 0, table.output
    assert "trained with precision: fp32 (as the references); Swin-UNet start: ctct none" in table.output


def test_precision_and_weights_tags_follow_the_device_amp_and_file(weights_dir, tmp_path, tiny_card):
    auto = expand(load_suite(write_suite(tmp_path / "a.yaml", tiny_card)))[0].resolved()
    off = expand(load_suite(write_suite(tmp_path / "o.yaml", tiny_card, train={**TRAIN, "amp": "off"})))[0].resolved()
    gpu = "cuda:0 (NVIDIA H200)"
    assert training_tags(auto, gpu)["precision"] == "bf16" and training_tags(auto, "cpu")["precision"] == "fp32"
    assert training_tags(off, gpu)["precision"] == "fp32"          # a suite's amp: off trains (and is tagged) fp32
    assert TrainConfig(amp="off").precision("cuda") == "fp32" and TrainConfig().precision("cuda") == "bf16"
    (weights_dir).mkdir()
    (weights_dir / FILE).write_bytes(b"weights")
    tags = training_tags({**auto, "method": {**auto["method"], "pretrained": "imagenet"}}, "cpu")
    assert tags["pretrained"] == "imagenet" and tags["pretrained_sha256"] == weights.file_digest(weights_dir / FILE)
    assert "pretrained" not in training_tags({"train": {"amp": "auto"}, "method": {"name": "bcp"}}, "cpu")


def test_table_and_layout_captions_state_precision_and_the_swin_start():
    frame = pd.DataFrame({"tags.precision": ["bf16", "", ""], "params.train.amp": ["auto", "auto", "off"],
                          "tags.device": ["cuda:0 (H200)", "cuda:0 (H200)", "cuda:0 (H200)"],
                          "tags.pretrained": ["imagenet", "", ""],
                          "params.method.pretrained": ["imagenet", "None", ""]})
    fields = training_fields(frame)   # old runs without the tag: resolved from params.train.amp and the device
    assert fields["precision"].tolist() == ["bf16", "bf16", "fp32"] and fields["pretrained"].tolist() == \
        ["imagenet", "none", ""]
    runs = fields.assign(method=["advmim", "ctct", "bcp"])
    note = training_note(runs)
    assert note.startswith("precision: bf16 autocast in 2 of 3 runs, fp32 in the rest (references: fp32)")
    assert note.endswith("Swin-UNet start: advmim imagenet, ctct none")
    assert training_note(runs.assign(precision="fp32").iloc[2:]) == "precision: fp32 (as the references)"
    assert training_note(runs.drop(columns="precision")) == ""    # frames not made from runs state nothing
    layout = pd.DataFrame([{"method": "advmim", "dataset": "acdc", "labeled": 3, "seed": s, "dice": 0.8, "jaccard": 0.7,
                            "hd95": 2.0, "asd": 1.0, "precision": "bf16", "pretrained": "imagenet"} for s in (0, 1)])
    grid = lbm.build_grid(lbm.load("advmim-table2"), layout)
    assert "Our runs' precision: bf16 autocast (references: fp32); Swin-UNet start: advmim imagenet." in grid.caption
    cells = pd.DataFrame({"method": ["advmim"] * 2, "cell": ["aaaaaaa", "bbbbbbb"], "iterations": ["2", "2"],
                          "labeled_patients": [3, 3], "pretrained": ["imagenet", "none"]})
    assert label_cells(cells)["method"].tolist() == ["advmim (iters 2, pretrained imagenet, aaaaaa)",
                                                     "advmim (iters 2, pretrained none, bbbbbb)"]


def test_fetch_writes_the_file_once_and_fails_clearly_offline(weights_dir, monkeypatch):
    calls = []

    def fake(spec):
        calls.append(spec.hf_repo)
        return {"patch_embed.proj.weight": torch.ones(96, 3, 4, 4)}

    path, downloaded = weights.fetch("swin-tiny", download=fake)
    assert downloaded and path == weights_dir / FILE and torch.load(path)["patch_embed.proj.weight"].sum() == 96 * 48
    assert weights.fetch("swin-tiny", download=fake) == (path, False) and len(calls) == 1
    path.unlink()

    import huggingface_hub.constants as hf   # offline: the hub client refuses before any connection

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(weights_dir / "hf-cache"))
    result = CliRunner().invoke(app, ["weights", "fetch", "swin-tiny"])
    assert result.exit_code == 1 and not path.exists()
    text = " ".join(result.output.split())
    assert "could not download swin-tiny" in text and weights.SWIN_TINY.origin_url in text
    assert "--pretrained none" in text
    listing = CliRunner().invoke(app, ["weights", "ls"])
    assert listing.exit_code == 0 and "swin-tiny" in listing.output and "imagenet" in listing.output
    bad = CliRunner().invoke(app, ["weights", "fetch", "swin-huge"])
    assert bad.exit_code == 2 and "valid: swin-tiny" in bad.output
