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

from benchmark.nets import build_network
from benchmark.registry import Registry

METHODS: Registry[type["Method"]] = Registry("method")


class Labeled(NamedTuple):
    image: torch.Tensor  # (B, C, H, W)
    label: torch.Tensor  # (B, H, W) int64


@dataclass
class MethodContext:
    """What the Trainer gives a method: the task's shape, the budget, and factories for nets and optimisers."""

    in_channels: int
    num_classes: int
    iterations: int
    network: str
    make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
    patch_size: int = 256   # the training patch (nets whose shape depends on it, e.g. DAN's discriminator)

    def build_network(self, name: str | None = None, **options: Any) -> nn.Module:
        """The named (default: the Trainer's) network; `options` go to its constructor."""
        return build_network(name or self.network, self.in_channels, self.num_classes, **options)


@dataclass
class NoConfig:
    """A method without hyperparameters of its own."""


@dataclass(frozen=True)
class Stage:
    """One phase of a method's training, run by the Trainer in order (e.g. BCP / CML: pre-train, self-train).

    `step` in `train_step` counts from 0 within the stage, and the lr schedule restarts with it. With
    `init="best_val"` the Trainer loads the previous stage's best-on-val weights before the stage starts.
    """

    name: str
    iterations: int
    init: str = "continue"   # continue (keep the weights as they are) | best_val (previous stage's best on val)


class Method(ABC):
    """Base class: subclasses set `Config`, build nets/optimisers in __init__, implement train_step/predict.

    Optional class attributes:
    - `presets`: named config overrides (ablation rows, variants), run as `method:preset` in suites and CLI;
    - `search_space`: default `bench tune` space, name -> "uniform:a:b" | "loguniform:a:b" | "int:a:b" |
      "choice:a,b,c";
    - `search_grids`: the papers' sensitivity grids, name -> list of values.
    """

    Config: ClassVar[type] = NoConfig
    #: False: batches hold labeled samples only (batch_size of them), as SSL4MIS's fully supervised script.
    uses_unlabeled: ClassVar[bool] = True
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    search_space: ClassVar[dict[str, str]] = {}
    search_grids: ClassVar[dict[str, list[Any]]] = {}

    def __init__(self, cfg: Any, ctx: MethodContext) -> None:
        self.cfg, self.ctx = cfg, ctx

    @abstractmethod
    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        """One optimisation step. Returns detached scalar tensors to log (the Trainer turns them into floats
        only when it logs, so there is no host sync per step)."""

    @abstractmethod
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, H, W) for inference; called under torch.no_grad() in eval mode."""

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
        from benchmark.config import build_dataclass

        return build_dataclass(cls.Config, overrides, where)

    @classmethod
    def config_dict(cls, cfg: Any) -> dict[str, Any]:
        return dataclasses.asdict(cfg)
