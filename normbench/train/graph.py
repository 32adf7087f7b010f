"""Whole-step CUDA graphs: the training step captured once and replayed for every later batch.

At small batches a GPU step is launch-bound: milliseconds of Python and kernel launches for
microseconds of arithmetic. `GraphStep` runs a few eager warm-up steps (real training steps, on
a side stream, so cuDNN/cuBLAS and the optimizer state are initialized), then captures the
forward, backward, optimizer update and the per-lane loss/correct sums as one `torch.cuda.CUDAGraph`
and replays it with each batch copied into static input buffers. The learning-rate schedule runs
outside the graph on a device tensor the graph reads. Every step (warm-up, captured and replayed)
computes what the eager step computes.

`graph_reason` says why a run cannot be captured; with `cuda_graph: auto` such a run trains
eagerly and meta.json records the reason, with `cuda_graph: true` it is an error.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

WARMUP_STEPS = 3  # eager steps before the capture


def graph_reason(cfg, model: nn.Module, device: torch.device, data_parallel: bool) -> str:
    """Why this run's step cannot be captured as a CUDA graph ('' when it can)."""
    if device.type != "cuda":
        return f"CUDA graphs need device cuda, this run trains on {device.type}"
    if cfg.probe is not None:
        return "the probe's hook reads activations on the host at probe steps"
    if data_parallel:
        return "a data-parallel rank all-reduces gradients through DDP's hooks, which a graph cannot hold"
    if cfg.precision == "fp16":
        return "fp16's loss scaler decides on the host whether to skip each step"
    for name, module in model.named_modules():
        torch_norm = isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm))
        if torch_norm and module.momentum is None and module.track_running_stats:
            return (f"layer {name}: PyTorch's {type(module).__name__} with momentum null reads its batch count on "
                    "the host every step (use norm.impl reference, or a numeric norm.momentum)")
    return ""


def use_graph(cfg, reason: str) -> bool:
    """Whether to capture: cuda_graph true or auto, and nothing stands in the way."""
    return cfg.cuda_graph is not False and not reason


def optimizer_options(cfg, capture: bool) -> dict:
    """Optimizer options a captured step needs: capturable Adam/AdamW (the step count on the
    device), and the learning rate as a device tensor when a schedule changes it."""
    if not capture:
        return {}
    options = {"capturable": True} if cfg.optimizer.name in ("adam", "adamw") else {}
    if cfg.schedule != "none":
        options["lr_tensor"] = True
    return options


class GraphStep:
    """A TrainStep captured as one CUDA graph after WARMUP_STEPS eager steps, then replayed."""

    def __init__(self, step, warmup: int = WARMUP_STEPS):
        self.step, self.warmup = step, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_x = self.static_y = None
        self.calls = 0

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        if self.graph is not None:
            self.static_x.copy_(xb)
            self.static_y.copy_(yb)
            self.graph.replay()
        elif self.calls < self.warmup:
            self._warm_up(xb, yb)
        else:
            self._capture(xb, yb)
            self.graph.replay()  # capturing records the step without running it
        self.calls += 1
        self.step.after_update()

    def _warm_up(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True.*")  # uncaptured on purpose
            self.step.update(xb, yb)
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        self.static_x, self.static_y = xb.clone(), yb.clone()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.step.update(self.static_x, self.static_y)
        self.graph = graph

    @property
    def loss_sum(self) -> torch.Tensor:
        """The step's per-lane loss sums (K,), updated inside the graph."""
        return self.step.loss_sum

    @property
    def correct(self) -> torch.Tensor:
        """The step's per-lane correct counts (K,), updated inside the graph."""
        return self.step.correct

    @property
    def lr(self) -> float:
        """The learning rate the next step will use."""
        return self.step.lr

    def reset(self) -> None:
        """Zero the per-lane sums in place (the graph keeps their addresses)."""
        self.step.reset()

    def state_dict(self) -> dict:
        """The eager step's state (a resumed run warms up and captures again)."""
        return self.step.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the eager step's state before the first warm-up step."""
        self.step.load_state_dict(state)
