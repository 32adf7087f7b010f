"""What the loop trains: lanes (one per run directory) and the model that serves them.

A lane is one seed's run: its config, data, run directory and how it stands. `SingleModel`
serves one lane with one model (a plain run, or one rank of a data-parallel run through its
`world`); `PackedSeeds` serves K lanes with one packed model whose K blocks never interact.
Both give the loop the same things: a `step`, batches, per-lane evaluation and diagnostics,
per-lane meta.json facts and the hooks around a step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from normbench.config import Config
from normbench.data import TensorData
from normbench.models import norm_layers
from normbench.models.packed import pack_inputs, pack_models, unpack_state
from normbench.norms.diagnostics import DIAGNOSTIC_COLUMNS, epoch_diagnostics
from normbench.results import NullRunDir, RunDir
from normbench.runtime import autocast, seed_everything
from normbench.train import fastpath, graph
from normbench.train.build import build_for_config, make_optimizer, make_scheduler, plan_steps
from normbench.train.evaluate import evaluate, evaluate_packed
from normbench.train.probe import Probe
from normbench.train.step import TrainStep, packed_loss, single_loss
from normbench.train.world import LocalWorld


@dataclass
class Lane:
    """One seed's run: its config, data, run directory and how it stands."""

    cfg: Config
    data: TensorData
    run_dir: RunDir | NullRunDir
    status: str = "running"  # running | diverged
    reason: str = ""
    final: dict = field(default_factory=dict)
    best_test_acc: float = 0.0
    resumed: bool = False  # continues from a checkpoint: its run directory's files are appended to

    def diverge(self, reason: str) -> None:
        """Record that this lane's loss became NaN/Inf; its rows stop, other lanes go on."""
        self.status, self.reason = "diverged", reason
        self.run_dir.finish("diverged", reason=reason)


def run_facts(cfg: Config, lane_model: nn.Module, run_model: nn.Module, plan: tuple[int, int, int], n_train: int,
              channels_last: bool, device: torch.device) -> dict:
    """The meta.json fields every run records about how it trains."""
    steps_per_epoch, total_steps, epochs = plan
    return {
        "model_parameters": sum(p.numel() for p in lane_model.parameters()),
        "norm_layers": norm_layers(lane_model),
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "epochs_planned": epochs,
        "dropped_per_epoch": n_train - steps_per_epoch * cfg.batch_size,
        "channels_last": channels_last,
        "fast_path_rewrites": fastpath.rewrites(run_model),
        "optimizer_impl": fastpath.optimizer_impl(device),
        "norm_momentum_torch": cfg.norm.torch_momentum(),  # the momentum in PyTorch's convention, as used
    }


def _step(cfg: Config, net: nn.Module, model: nn.Module, loss_fn, lanes: int, n_train: int, device: torch.device,
          data_parallel: bool = False):
    """(step, (steps per epoch, total steps, epochs), the meta.json `cuda_graph` record) for training
    `model` as `net`: a TrainStep, captured as a CUDA graph where the run allows it."""
    reason = graph.graph_reason(cfg, model, device, data_parallel)
    capture = graph.use_graph(cfg, reason)
    optimizer = make_optimizer(cfg, model.parameters(), device, **graph.optimizer_options(cfg, capture))
    plan = plan_steps(cfg, n_train)
    scheduler = make_scheduler(cfg, optimizer, plan[1])
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    step = TrainStep(net, loss_fn, optimizer, scheduler, scaler, cfg.precision, lanes, device, autocast_cache=not capture)
    if cfg.cuda_graph is False and not reason:
        reason = "cuda_graph: false in the config"
    return (graph.GraphStep(step) if capture else step), plan, {"used": capture, "reason": reason}


class SingleModel:
    """One model for one lane: a plain run (LocalWorld) or one rank of a data-parallel run."""

    def __init__(self, lane: Lane, device: torch.device, world=None):
        cfg = lane.cfg
        self.cfg, self.lanes, self.device, self.world = cfg, [lane], device, world or LocalWorld(device)
        seed_everything(cfg.seed)
        model = build_for_config(cfg, lane.data.shape, lane.data.num_classes).to(device)
        self.channels_last = fastpath.channels_last_on(cfg.channels_last, cfg.model, lane.data.shape, device)
        self.model = fastpath.prepare_model(model, self.channels_last, reorder=not cfg.probe)  # the probe hooks layers as built
        self.data = fastpath.prepare_data(lane.data, self.channels_last)
        net = self.world.wrap(self.model)  # data-parallel: DDP averages gradients over processes
        self.step, self.plan, captured = _step(cfg, net, self.model, single_loss, 1, len(self.data.train_y), device,
                                               self.world.data_parallel)
        self.orders = [torch.Generator().manual_seed(cfg.seed)]  # data order, independent of init
        lane.run_dir.update_meta(**run_facts(cfg, self.model, self.model, self.plan, len(self.data.train_y),
                                             self.channels_last, device), cuda_graph=captured)
        self.probe = Probe(self.model, cfg.probe, lane.run_dir.path, append=lane.resumed) if cfg.probe else None

    def lane_states(self) -> list[dict]:
        """[the lane's model state_dict] (the fast-path rewrites keep the built model's names)."""
        return [self.model.state_dict()]

    def batch(self, perms: list[torch.Tensor], i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The i-th batch of the epoch (this process's shard of it): (B, C, H, W), (B,)."""
        batch = self.cfg.batch_size
        idx = self.world.shard(perms[0][i * batch : (i + 1) * batch])
        return self.data.train_x[idx], self.data.train_y[idx]

    def _evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        return evaluate(self.model, x, y, self.cfg.eval_batch_size, self.cfg.precision)

    def evaluate(self, split: str = "test") -> list[tuple[float, float] | None]:
        """[(loss, accuracy)] of the lane over the whole `split` (test or val; None without a val split)."""
        x, y = (self.data.test_x, self.data.test_y) if split == "test" else (self.data.val_x, self.data.val_y)
        return [None if x is None else self.world.evaluate(self.model, self._evaluate, x, y)]

    def diagnostics(self, epoch: int) -> list[dict]:
        """[the lane's batch-norm diagnostic columns] for this epoch's row."""
        return [epoch_diagnostics(self.model, self.data, self.cfg, epoch, evaluate,
                                  lambda: autocast(self.device, self.cfg.precision))]

    def before_step(self, step: int) -> None:
        """Arm the probe for training step `step` (1-based), if there is one."""
        if self.probe:
            self.probe.before_step(step)

    def after_step(self, step: int, epoch: int) -> None:
        """Let the probe write its row, if this was a probe step."""
        if self.probe:
            self.probe.after_step(step, epoch, lambda: self._evaluate(self.data.test_x, self.data.test_y)[1])

    def close(self) -> None:
        """Close the probe's CSV (rows are flushed as written, so an early ending loses none)."""
        if self.probe:
            self.probe.close()


class PackedSeeds:
    """K lanes (seeds) trained as one packed model; each keeps its own init, data order and data."""

    def __init__(self, lanes: list[Lane], device: torch.device):
        cfg = lanes[0].cfg
        self.cfg, self.lanes, self.device, self.world = cfg, lanes, device, LocalWorld(device)
        models = []
        for lane in lanes:
            seed_everything(lane.cfg.seed)  # each seed's init is its separate run's
            models.append(build_for_config(lane.cfg, lane.data.shape, lane.data.num_classes))
        model = pack_models(models).to(device)
        self.channels_last = fastpath.channels_last_on(cfg.channels_last, cfg.model, lanes[0].data.shape, device)
        self.model = fastpath.prepare_model(model, self.channels_last)
        self.datas = [lane.data for lane in lanes]
        for data in {id(d): d for d in self.datas}.values():  # a data set shared by all seeds is prepared once
            fastpath.prepare_data(data, self.channels_last)
        n_train = len(self.datas[0].train_y)
        self.step, self.plan, captured = _step(cfg, self.model, self.model, packed_loss, len(lanes), n_train, device)
        self.orders = [torch.Generator().manual_seed(lane.cfg.seed) for lane in lanes]  # each seed's data order
        seeds = [lane.cfg.seed for lane in lanes]
        for i, lane in enumerate(lanes):
            facts = run_facts(lane.cfg, models[i], self.model, self.plan, n_train, self.channels_last, device)
            lane.run_dir.update_meta(**facts, cuda_graph=captured, pack={
                "size": len(lanes), "index": i, "seeds": seeds, "run_dirs": [l.run_dir.path.name for l in lanes]})

    def lane_states(self) -> list[dict]:
        """Each seed's model state_dict, cut out of the packed model (the keys of its own model)."""
        packed = self.model.state_dict()
        states = []
        for i, lane in enumerate(self.lanes):
            with torch.device("meta"):
                template = build_for_config(lane.cfg, lane.data.shape, lane.data.num_classes).state_dict()
            states.append(unpack_state(packed, template, len(self.lanes), i))
        return states

    def batch(self, perms: list[torch.Tensor], i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The i-th packed batch of the epoch: (B, K*C, H, W), (B, K)."""
        batch = self.cfg.batch_size
        idx = [p[i * batch : (i + 1) * batch] for p in perms]
        xb = pack_inputs([d.train_x[j] for d, j in zip(self.datas, idx)])
        if self.channels_last:
            xb = fastpath.to_channels_last(xb)
        return xb, torch.stack([d.train_y[j] for d, j in zip(self.datas, idx)], dim=1)

    def evaluate(self, split: str = "test") -> list[tuple[float, float] | None]:
        """Per lane (loss, accuracy) over its whole `split` (test or val; None without a val split)."""
        xs = [d.test_x if split == "test" else d.val_x for d in self.datas]
        ys = [d.test_y if split == "test" else d.val_y for d in self.datas]
        if xs[0] is None:
            return [None] * len(self.lanes)
        return evaluate_packed(self.model, xs, ys, self.cfg.eval_batch_size, self.cfg.precision)

    def diagnostics(self, epoch: int) -> list[dict]:
        """Batch-norm diagnostics are not computed for packed seeds: their columns stay empty."""
        return [dict.fromkeys(DIAGNOSTIC_COLUMNS) for _ in self.lanes]

    def before_step(self, step: int) -> None:
        """No probe in a packed run."""

    def after_step(self, step: int, epoch: int) -> None:
        """No probe in a packed run."""

    def close(self) -> None:
        """Nothing to close."""
