"""The contract every method implements, and the methods registry.

A method owns its networks and optimisers and one `train_step`; the Trainer owns everything else (loop,
lr schedule, AMP, logging, checkpoints, evaluation). Hyperparameters are a dataclass `Config` on the class,
so defaults live next to the code and a suite can override them by name.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, NamedTuple

import torch
from torch import nn

from benchmark.config import ConfigError, as_patch, build_dataclass
from benchmark.nets import build_network
from benchmark.registry import Registry

METHODS: Registry[type["Method"]] = Registry("method")


class Labeled(NamedTuple):
    image: torch.Tensor  # (B, C, *spatial): (B, C, H, W) or (B, C, D, H, W)
    label: torch.Tensor  # (B, *spatial) int64


@dataclass
class MethodContext:
    """What the Trainer gives a method: the task's shape, the budget, and factories for nets and optimisers."""

    in_channels: int
    num_classes: int
    iterations: int
    network: str
    make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
    patch: tuple[int, ...] = (256, 256)   # the training patch (nets whose shape depends on it, e.g. DAN's discriminator)
    network_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # for the default network

    def __post_init__(self) -> None:
        self.patch = as_patch(self.patch)   # one int: a 2D square

    @property
    def spatial_dims(self) -> int:
        return len(self.patch)

    def build_network(self, name: str | None = None, **options: Any) -> nn.Module:
        """The named registered network (default: the Trainer's, with the suite's `network_options`);
        `options` go to its constructor."""
        if name is None:
            name, options = self.network, {**self.network_options, **options}
        return build_network(name, self.in_channels, self.num_classes, **options)


@dataclass
class NoConfig:
    """A method without hyperparameters of its own."""


@dataclass(frozen=True)
class Stage:
    """One phase of a method's training, run by the Trainer in order (e.g. BCP / CML: pre-train, self-train).

    `step` in `train_step` counts from 0 within the stage, and the lr schedule restarts with it. With
    `init="best_val"` the Trainer loads the previous stage's selected weights before the stage starts: its
    best on val; on a card without val, its best on test where the protocol selects on test (the LA codebases
    BCP and CML do so), else the weights as they are. `lr_schedule` overrides the Trainer's schedule for this
    stage (e.g. BCP / CML LA: constant while pre-training, step decay while self-training).
    """

    name: str
    iterations: int
    init: str = "continue"   # continue (keep the weights as they are) | best_val (previous stage's selected weights)
    lr_schedule: str | None = None   # poly | constant | step; None: the Trainer's (TrainConfig.lr_schedule)


class Method(ABC):
    """Base class: subclasses set `Config`, build nets/optimisers in __init__, implement train_step/predict.

    Optional class attributes:
    - `dims`: the spatial dimensions it trains in (2: slices and images, 3: volumes); `all` in a suite means
      every method whose `dims` hold the card's;
    - `networks`: None if it trains whichever registered network the suite names (`train.network`), else the
      only values of `train.network` it accepts (a method that builds its own variant of a net);
    - `also_builds`: other registered networks it trains on the same patch (checked against it too);
    - `presets`: named config overrides (ablation rows, variants), run as `method:preset` in suites and CLI;
    - `search_space`: default `bench tune` space, name -> "uniform:a:b" | "loguniform:a:b" | "int:a:b" |
      "choice:a,b,c";
    - `search_grids`: the papers' sensitivity grids, name -> list of values.
    """

    Config: ClassVar[type] = NoConfig
    #: False: batches hold labeled samples only (batch_size of them), as SSL4MIS's fully supervised script.
    uses_unlabeled: ClassVar[bool] = True
    dims: ClassVar[tuple[int, ...]] = (2,)
    networks: ClassVar[tuple[str, ...] | None] = None
    also_builds: ClassVar[tuple[str, ...]] = ()   # further registered nets it trains on the patch (CTCT's Swin-UNet)
    pairs_per_half: ClassVar[bool] = False   # pairs images within each half-batch: >= 2 labeled and 2 unlabeled
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    search_space: ClassVar[dict[str, str]] = {}
    search_grids: ClassVar[dict[str, list[Any]]] = {}

    def __init__(self, cfg: Any, ctx: MethodContext) -> None:
        self.cfg, self.ctx = cfg, ctx

    @classmethod
    def draws_unlabeled(cls, cfg: Any) -> bool:
        """Whether the Trainer puts unlabeled images in the batches for this config (default `uses_unlabeled`;
        a method whose labeled-only preset must run with every row labeled overrides it)."""
        return cls.uses_unlabeled

    @classmethod
    def check(cls, cfg: Any, train: Any, where: str) -> None:
        """Requirements on the Trainer's settings (`train`, a TrainConfig), checked when a suite is expanded,
        before any training: raise ConfigError naming the field. The base checks the unlabeled batch (and
        `pairs_per_half`)."""
        if cls.draws_unlabeled(cfg) and train.batch_size <= train.labeled_batch_size:
            raise ConfigError(f"{where}: this method needs unlabeled images in every batch: batch_size "
                              f"({train.batch_size}) must exceed labeled_batch_size ({train.labeled_batch_size})")
        if cls.pairs_per_half and min(train.labeled_batch_size, train.batch_size - train.labeled_batch_size) < 2:
            raise ConfigError(f"{where}: this method pairs images within the labeled and the unlabeled half-batch: "
                              f"labeled_batch_size and batch_size - labeled_batch_size must both be >= 2 (got "
                              f"{train.labeled_batch_size} and {train.batch_size - train.labeled_batch_size})")

    @abstractmethod
    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        """One optimisation step. Returns detached scalar tensors to log (the Trainer turns them into floats
        only when it logs, so there is no host sync per step)."""

    @abstractmethod
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, *spatial) for inference; called under torch.no_grad() in eval mode."""

    def stages(self) -> list[Stage]:
        """The training phases; one stage of `ctx.iterations` steps unless a method says otherwise."""
        return [Stage("train", self.ctx.iterations)]

    def start_stage(self, stage: Stage, index: int) -> None:
        """Called by the Trainer when a stage starts (and again on resume inside it), after the weights named
        by `stage.init` are loaded. Multi-stage methods reset teachers or optimisers here."""

    # ---- plumbing shared by all methods -------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {k: v for k, v in vars(self).items() if isinstance(v, nn.Module)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.optim.Optimizer)}

    def to(self, device: torch.device) -> "Method":
        for m in self.modules().values():
            m.to(device)
        return self

    def train(self, mode: bool = True) -> None:
        for m in self.modules().values():
            m.train(mode)

    @staticmethod
    def update(loss: torch.Tensor, *optimizers: torch.optim.Optimizer, max_grad_norm: float = 0.0,
               inputs: list[torch.Tensor] | None = None, accumulate: bool = False) -> None:
        """zero_grad every optimiser, one backward (into `inputs` only, if given), clip each optimiser's
        gradient norm to `max_grad_norm` (0: no clipping), step every optimiser. With `accumulate`, the
        gradients an earlier backward of this step left are kept and this loss's are added to them (a loss
        backpropagated in parts, to free each part's graph early: the same gradient, less peak memory)."""
        if not accumulate:
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
        loss.backward(inputs=inputs)
        for opt in optimizers:
            if max_grad_norm > 0:
                params = [p for group in opt.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()

    def consistency_update(self, sup: torch.Tensor, cons: torch.Tensor, step: int,
                           optimizer: torch.optim.Optimizer, name: str = "loss_cons") -> dict[str, torch.Tensor]:
        """The common SSL step: loss = sup + cfg.consistency_weight(step) * cons, one optimiser step, and the
        usual log dict (loss, loss_sup, `name`, cons_weight). Needs a `RampedConsistency` config."""
        weight = self.cfg.consistency_weight(step)
        loss = sup + weight * cons
        self.update(loss, optimizer)
        return {"loss": loss.detach(), "loss_sup": sup.detach(), name: cons.detach(), "cons_weight": torch.tensor(weight)}

    def state_dict(self) -> dict[str, Any]:
        return {"modules": {k: m.state_dict() for k, m in self.modules().items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()}}

    def load_state_dict(self, state: dict[str, Any], weights_only: bool = False) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state["modules"][k])
        if not weights_only:
            for k, o in self.optimizers().items():
                o.load_state_dict(state["optimizers"][k])

    @classmethod
    def make_config(cls, overrides: dict[str, Any], where: str) -> Any:
        return build_dataclass(cls.Config, overrides, where)

    @classmethod
    def config_dict(cls, cfg: Any) -> dict[str, Any]:
        return dataclasses.asdict(cfg)
