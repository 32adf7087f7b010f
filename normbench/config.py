"""Run configuration: every option in one place, validated strictly, frozen, dumped with the run.

A config is a YAML mapping. Unknown keys, wrong types and out-of-range values are all reported
at once, each with its full key path (e.g. `norm.groups`), the bad value and what is allowed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from normbench.configfile import UniqueKeyLoader, read_yaml, resolve_config, shown  # noqa: F401 (UniqueKeyLoader: its old home)
from normbench.errors import ConfigError
from normbench.norms import IMPLS, NORMS, NormOptions
from normbench.values import parse_assignment, parse_value

DATASET_NAMES = ("fashion-mnist", "mnist", "cifar10", "cifar100", "synthetic")
# The models `normbench.models.MODELS` builds (a test keeps the two in step).
MODEL_NAMES = ("cnn", "mlp", "bn_mlp", "resnet20")
# What `pack: K` can pack exactly (normbench/models/packed.py converts exactly these layers).
PACKABLE_MODELS = ("cnn", "mlp", "bn_mlp")
PACKABLE_NORMS = ("none", "batch", "layer", "group", "instance")


def _one_of(value: str, valid, what: str) -> str:
    """`value` if it is one of `valid`, else a ValueError listing the valid names."""
    if value not in valid:
        raise ValueError(f"unknown {what}; valid {what}s: {', '.join(valid)}")
    return value


class _Strict(BaseModel):
    # Strict: "8" is not an int, unknown keys are errors, a validated config cannot change.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DatasetConfig(_Strict):
    """Which data to train on; a bare string `dataset: mnist` is short for `dataset: {name: mnist}`."""

    name: str = Field("fashion-mnist", description=f"the data: {' | '.join(DATASET_NAMES)}; `synthetic` is random data of "
        "the shape below, used only when asked for (docs/data.md)")
    data_dir: str | None = Field(None, description="folder with the dataset; `--data-dir` overrides it, and it overrides "
        "`$NORMBENCH_DATA` (docs/data.md)")
    val_samples: int | None = Field(None, ge=0, description="training samples held out as the validation split "
        "(val_loss, val_acc in epochs.csv; the same samples for every run and seed, drawn with a fixed seed); null = "
        "5,000 for a real dataset (at most a tenth of its training split), 0 for synthetic; 0 = no validation split")
    # The keys below are used by `synthetic` only.
    shape: list[int] = Field([1, 28, 28], description="`synthetic` only: sample shape [C, H, W]")
    num_classes: int = Field(10, ge=2, description="`synthetic` only: number of classes")
    train_samples: int = Field(2048, ge=2, description="`synthetic` only: training split size")
    test_samples: int = Field(512, ge=1, description="`synthetic` only: test split size")

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return _one_of(value, DATASET_NAMES, "dataset")

    @field_validator("shape")
    @classmethod
    def _chw(cls, value: list[int]) -> list[int]:
        if len(value) != 3 or min(value) < 1:
            raise ValueError("must be three positive integers [C, H, W]")
        return value


class NormConfig(_Strict):
    """The normalization layer used in every norm slot of the model."""

    type: str = Field("batch", description=f"a registered norm ({', '.join(NORMS)}); `normbench norms` and docs/norms.md "
        "say what each computes")
    eps: float = Field(1e-5, gt=0, description="added to the variance before the square root")
    momentum: float | None = Field(0.1, ge=0, le=1, description="running statistics: `running = (1 - m) * running + m * "
        "batch`; null = cumulative average (PyTorch semantics)")
    affine: bool | None = Field(None, description="learnable per-channel γ/β; null = the layer's PyTorch default (true, "
        "but false for instance)")
    track_running_stats: bool | None = Field(None, description="keep running statistics for eval; null = PyTorch default "
        "(true for batch, false for instance)")
    groups: int | None = Field(None, ge=1, description="group, ws_group, evonorm_s0: number of groups; null = the largest "
        "divisor G of C with G ≤ 32 and C/G ≥ 4 channels per group on feature maps, ≥ 16 features per group on "
        "feature vectors (1 group when none is); a set value overrides it, "
        "1 channel per group included. A value that does not divide a layer's channels is an error naming the layer")
    placement: Literal["pre", "post"] = Field("pre", description="norm before the activation (`pre`, as in the BN paper) "
        "or after it (`post`)")
    impl: str = Field("torch", description="`torch`: PyTorch's modules; `reference`: normbench's from-scratch modules "
        "(normbench/norms/reference.py). Schemes with one implementation build it for both (docs/norms.md says which)")
    momentum_convention: Literal["torch", "keras"] = Field("torch", description="how `norm.momentum` is read: torch's "
        "weight of the batch, or Keras's weight of the running value (Keras 0.99 = torch 0.01); meta.json's "
        "`norm_momentum_torch` is the value used, in torch's convention")
    r_max: float = Field(3.0, ge=1, description="batch_renorm: final clipping limit of r to [1/r_max, r_max]")
    d_max: float = Field(5.0, ge=0, description="batch_renorm: final clipping limit of d to [-d_max, d_max]")
    renorm_warmup_steps: int = Field(500, ge=0, description="batch_renorm: steps of plain batch norm (r_max = 1, d_max = "
        "0) first")
    renorm_relax_steps: int = Field(2000, ge=0, description="batch_renorm: then steps over which the limits relax "
        "linearly to `r_max` / `d_max`")
    frn_learnable_eps: bool | None = Field(None, description="frn: add a learned |ε| (initialized to 1) to `eps`; null = "
        "learned on feature vectors, fixed on maps")
    sync: bool = Field(False, description="batch norm (impl torch) only: in a data-parallel run, batch statistics over "
        "the global batch of all processes (docs/scaling.md); with one process it is plain batch norm")
    ghost_batch_size: int = Field(16, ge=2, description="ghost_batch: samples per ghost batch; must divide `batch_size`, "
        "or be at least as large (one ghost batch: plain batch norm)")
    ws_eps: float = Field(1e-6, gt=0, description="ws_group: added to each filter's weight variance before the square "
        "root (timm's StdConv2d value)")
    dyt_alpha_init: float = Field(0.5, gt=0, description="dyt: initial value of the learnable scalar α in "
        "γ·tanh(α·x) + β (the paper's α0)")

    @field_validator("type", "impl")
    @classmethod
    def _registered(cls, value: str, info) -> str:
        valid, what = {"type": (NORMS, "norm"), "impl": (IMPLS, "implementation")}[info.field_name]
        return _one_of(value, valid, what)

    def torch_momentum(self) -> float | None:
        """The momentum in PyTorch's convention (keras 0.99 -> 0.01); None stays the cumulative average."""
        if self.momentum is None or self.momentum_convention == "torch":
            return self.momentum
        return round(1.0 - self.momentum, 12)  # 1 - 0.99 = 0.010000000000000009 otherwise

    def options(self) -> dict[str, Any]:
        """The keyword options `norms.make_norm` takes: every NormOptions field, momentum in torch's convention."""
        return {**{name: getattr(self, name) for name in NormOptions.__dataclass_fields__},
                "momentum": self.torch_momentum()}


class PreciseBNConfig(_Strict):
    """PreciseBN (Wu & Johnson 2021): recompute batch-norm population statistics before evaluation."""

    batches: int = Field(200, ge=1, description="training batches averaged (weights frozen) before each evaluation")


class ProbeConfig(_Strict):
    """Record percentiles of the input to one layer during training (the BN paper's Figure 1(b, c))."""

    layer: str = Field(description="a top-level layer of the model whose input is probed (`act1`, `act2`, ... are the "
        "nonlinearities; `conv1`, `norm1`, ... too); an unknown name is an error listing the valid ones")
    every: int = Field(50, ge=1, description="probe at step 1 and every this many steps")
    unit: int | None = Field(None, ge=0, description="one channel/unit of the layer input; null = all units pooled. Out "
        "of range is a config error")
    test_acc: bool = Field(False, description="also evaluate test accuracy (eval mode, full test split) at each probe step")


class OptimizerConfig(_Strict):
    """The optimizer; `momentum` is used by sgd only."""

    name: Literal["sgd", "adam", "adamw"] = Field("adam", description="the optimizer; fused kernels on CPU and CUDA "
        "(meta.json's `optimizer_impl`)")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (decoupled for adamw)")


class Config(_Strict):
    """One training run."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="run name, used in the run directory "
        "name; default: the config file's stem")
    seed: int = Field(0, ge=0, description="seeds Python, NumPy and torch (model init) and the data order")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="`auto` picks cuda, then mps, then cpu; an "
        "unavailable device is an error")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: str = Field("cnn", description=f"the network: {' | '.join(MODEL_NAMES)} (see Models below)")
    norm: NormConfig = Field(default_factory=NormConfig)
    batch_size: int = Field(64, ge=1, description="samples per training step; batch-dependent norms need ≥ 2. In a "
        "data-parallel run this is the global batch, divided evenly over the processes")
    epochs: int = Field(1, ge=1, description="passes over the training set")
    max_samples: int | None = Field(None, ge=1, description="training budget in samples; overrides `epochs` (the last "
        "epoch may be partial)")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: Literal["none", "cosine", "step"] = Field("none", description="per-step learning-rate schedule: `cosine` to "
        "0 over the run, or `step`: ×0.1 at 50 % and 75 % of the steps")
    eval_batch_size: int = Field(1000, ge=1, description="evaluation batch size")
    log_every: int = Field(50, ge=1, description="a steps.csv row every this many steps (and at each epoch's last step)")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads; null = torch's default")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast precision for training and evaluation")
    channels_last: Literal["auto", True, False] = Field("auto", description="store 4-D activations and conv weights as "
        "(N, H, W, C), which oneDNN and cuDNN convolve faster; `auto` = on for `cnn` on CPU and CUDA. Same math "
        "(tests/test_bench.py checks it against the contiguous layout)")
    precise_bn: PreciseBNConfig | None = Field(None, description="`norm.type: batch` only: also evaluate with PreciseBN "
        "statistics each epoch (docs/diagnostics.md)")
    probe: ProbeConfig | None = Field(None, description="record percentiles of one layer's input during training into "
        "probe.csv (docs/diagnostics.md)")
    pack: int = Field(1, ge=1, description="train seeds `seed`…`seed+pack-1` as one packed model, writing one ordinary "
        f"run directory per seed (docs/packed-seeds.md); models {', '.join(PACKABLE_MODELS)}, "
        f"norms {', '.join(PACKABLE_NORMS)} (impl torch), precision fp32 or bf16, no probe, precise_bn, norm.sync or "
        "--nproc; anything else is a config error")
    checkpoint_every: int = Field(
        1, ge=0, description="write checkpoint.pt (everything `normbench run --resume` needs to continue exactly) every "
        "this many epochs and when the run is stopped (Ctrl-C, SIGTERM); 0 = never"
    )
    tensorboard: bool = Field(False, description="also write the steps.csv and epochs.csv values as TensorBoard scalars "
        "into `<run dir>/tensorboard/` (docs/tensorboard.md); needs `pip install 'normbench[tensorboard]'`")
    cuda_graph: Literal["auto", True, False] = Field(
        "auto", description="capture the training step as one CUDA graph and replay it; auto = on for CUDA where the "
        "run allows it (not with a probe, fp16, a data-parallel rank or PyTorch norms with momentum null)"
    )

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("norm", mode="before")
    @classmethod
    def _norm_shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return _one_of(value, MODEL_NAMES, "model")

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        if self.batch_size < 2 and NORMS[self.norm.type].batch_dependent:
            raise ValueError(
                f"batch_size={self.batch_size} with norm.type={self.norm.type}: batch statistics need "
                "at least 2 samples per batch; use batch_size >= 2 or another norm"
            )
        ghost = self.norm.ghost_batch_size
        if self.norm.type == "ghost_batch" and ghost < self.batch_size and self.batch_size % ghost:
            raise ValueError(f"norm.ghost_batch_size={ghost} does not split batch_size={self.batch_size} into equal ghost "
                             f"batches; use a divisor of {self.batch_size} or a size >= {self.batch_size} (plain batch norm)")
        if self.norm.sync and (self.norm.type != "batch" or self.norm.impl != "torch"):
            raise ValueError(
                f"norm.sync=true applies to batch norm with impl torch only, not norm.type={self.norm.type} "
                f"impl={self.norm.impl}; drop norm.sync"
            )
        if self.precise_bn is not None and self.norm.type != "batch":
            raise ValueError(f"precise_bn applies to batch norm only, but norm.type={self.norm.type}; remove precise_bn")
        if self.max_samples is not None and self.max_samples < self.batch_size:
            raise ValueError(f"max_samples={self.max_samples} is less than one batch of {self.batch_size}")
        if self.pack > 1:
            _check_packable(self)
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:  # fail before any training
            raise ValueError("tensorboard: true needs the tensorboard package; pip install 'normbench[tensorboard]', or "
                             "set tensorboard: false")
        return self


def pack_obstacle(cfg: "Config") -> tuple[str, str]:
    """What in `cfg` packing is not supported with, and what to do instead; ('', '') where packing
    is exact (the model, the norm and every option allow it)."""
    if cfg.model not in PACKABLE_MODELS:
        return f"model {cfg.model}", f"packable models: {', '.join(PACKABLE_MODELS)} (or set pack: 1)"
    if cfg.norm.type not in PACKABLE_NORMS or cfg.norm.impl != "torch":
        return (f"norm {cfg.norm.type} (impl {cfg.norm.impl})", "packing converts only PyTorch's own modules of "
                f"{', '.join(PACKABLE_NORMS)} exactly; use one with impl torch (or set pack: 1)")
    unsupported = [key for key, used in (("probe", cfg.probe), ("precise_bn", cfg.precise_bn), ("norm.sync", cfg.norm.sync))
                   if used]
    if unsupported:
        return ", ".join(unsupported), "remove it or set pack: 1"
    if cfg.precision == "fp16":
        return "precision fp16", ("one loss scaler would skip every seed's step when one seed overflows; use fp32 or "
                                  "bf16 (or set pack: 1)")
    return "", ""


def _check_packable(cfg: "Config") -> None:
    """pack > 1 only where packing is exact; anything else is an error, never a silent wrong result."""
    what, advice = pack_obstacle(cfg)
    if what:
        raise ValueError(f"pack={cfg.pack} is not supported with {what}: {advice}")


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The valid keys of the mapping at `loc` (a path into the config), if it is a known section."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field else None
        # an optional section (`probe: ProbeConfig | None`) lists the section's keys too
        annotation = next((a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)), annotation)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return list(model.model_fields)


def _describe(error: dict) -> str:
    """One problem as `path=value: what is allowed`."""
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    path = ".".join(p if isinstance(p, str) and len(p) <= 80 else shown(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(Config, loc[:-1])
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"unknown key '{path}'{hint}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{path}: required"
    if not loc:  # a whole-config check: the message names its keys
        return message
    return f"{path}={shown(error['input'])}: {message}"


def validate(data: Any, source: str) -> Config:
    """Validate a config mapping; all problems become one ConfigError line."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a YAML mapping of keys to values, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"invalid config {source}: {problems}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=VALUE` -> (['a', 'b'], VALUE as values.parse_value reads it: 8 an int, null None, 1e-3 a float)."""
    key, raw = parse_assignment(text, "--set", "KEY=VALUE", "--set norm.type=group")
    return key.split("."), parse_value(raw)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """A copy of `data` with each `KEY=VALUE` set at its dotted path."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if isinstance(child, str) and part in ("dataset", "norm"):  # expand the shorthand
                child = {"name" if part == "dataset" else "type": child}
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: '{'.'.join(path[: i + 1])}' is not a section")
            node[part] = child
            node = child
        node[path[-1]] = value
    return data


def load_config(path: Path | str, overrides: list[str] | tuple = ()) -> Config:
    """Read, override and validate a config file or a shipped config named like `quickstart`
    (configfile.resolve_config); `name` defaults to the file's stem."""
    path = resolve_config(path)
    data = read_yaml(path)
    if data is None:
        data = {}
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
        data = apply_overrides(data, list(overrides))
    return validate(data, str(path))


def to_dict(config: Config) -> dict:
    """The resolved config as plain data (what config.yaml holds)."""
    return config.model_dump(mode="json")


def dump(config: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def flatten(data: dict, prefix: str = "") -> dict:
    """A nested config mapping as {dotted key: value}, e.g. {"norm.type": "batch"}."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
