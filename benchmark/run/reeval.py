"""`bench eval`: score saved weights again under another protocol, without retraining."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmark import catalog
from benchmark.checkpoints import safe_load
from benchmark.config import ConfigError, EvaluationProtocol, TrainConfig, build_dataclass, parse_card
from benchmark.data.dataset import load_dataset
from benchmark.evaluate import evaluate_cases, make_inferer, summarize
from benchmark.train import build_method, pick_device
from benchmark.weights import takes_weights


@dataclass
class SavedModel:
    """Weights plus the resolved trial config they were trained with (config.yaml of the run dir)."""

    weights: Path
    config: dict[str, Any]

    @classmethod
    def from_file(cls, weights: Path) -> "SavedModel":
        weights = Path(weights)
        if not weights.is_file():
            raise ConfigError(f"checkpoint {weights} not found")
        config_file = weights.parent / "config.yaml"
        if not config_file.is_file():
            raise ConfigError(f"{config_file} not found: bench eval needs the config.yaml that bench run writes "
                              f"beside the weights")
        return cls(weights, yaml.safe_load(config_file.read_text()))

    @classmethod
    def from_run_dir(cls, run_dir: Path, checkpoint: str) -> "SavedModel":
        return cls.from_file(Path(run_dir) / f"{checkpoint}.pt")


def evaluate_saved(saved: SavedModel, protocol_overrides: dict[str, Any], dataset: str | None = None,
                   data_root: str | Path | None = None, device: str = "auto",
                   workers: int = 0) -> tuple[EvaluationProtocol, dict[str, float], Path]:
    """Test metrics of saved weights under the card's protocol updated by `protocol_overrides`; per-case
    rows go to `cases_<weights>_eval-<scoring hash>.csv` beside the weights."""
    cfg = saved.config
    card = catalog.get_card(dataset) if dataset else parse_card(cfg["dataset"], saved.weights.parent / "config.yaml")
    # --suite: that card's protocol; else the run's own (both updated by the overrides)
    base = {**(dataclasses.asdict(card.evaluation) if dataset else cfg["dataset"]["evaluation"]), **protocol_overrides}
    protocol = build_dataclass(EvaluationProtocol, base, "bench eval: protocol")
    protocol.validate("bench eval: protocol", card.num_classes, card.spatial_dims)
    method_cfg_values = {k: v for k, v in cfg["method"].items() if k != "name"}
    method_cls = catalog.method_class(cfg["method"]["name"])
    train_values = dict(cfg["train"])
    # the saved weights overwrite every parameter: build without the ImageNet start (no weights file needed)
    if takes_weights(method_cls):
        method_cfg_values["pretrained"] = "none"
    if "pretrained" in train_values.get("network_options", {}):
        train_values["network_options"] = {**train_values["network_options"], "pretrained": "none"}
    train = build_dataclass(TrainConfig, train_values, "config.yaml: train")
    dev = pick_device(device)
    method = build_method(method_cls, method_cls.make_config(method_cfg_values, "config.yaml: method"), train,
                          card.in_channels, card.num_classes).to(dev)
    state = safe_load(saved.weights, dev)
    method.load_state_dict(state if "modules" in state else state["method"], weights_only=True)
    method.train(False)
    data = load_dataset(card, data_root)
    volumes = data.eval_cases(protocol.test_split)
    csv_path = saved.weights.parent / f"cases_{saved.weights.stem}_eval-{protocol.scoring_hash}.csv"
    cases = evaluate_cases(method.predict, volumes, protocol, card.classes, make_inferer(protocol, train.patch_size),
                           dev, workers, csv_path)
    return protocol, summarize(cases), csv_path


def protocol_changes(protocol: EvaluationProtocol, original: dict[str, Any]) -> dict[str, Any]:
    """The fields in which `protocol` differs from the run's own."""
    now = dataclasses.asdict(protocol)
    return {k: v for k, v in now.items() if k != "checkpoint" and original.get(k) != v and
            not (isinstance(v, tuple) and list(v) == original.get(k))}
