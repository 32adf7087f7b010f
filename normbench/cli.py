"""The `normbench` command line: commands declare options and call library code, nothing more.

Every NormbenchError becomes one red line on stderr and its exit code; no tracebacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from normbench.version import __version__
from normbench.cli_edge import Command, Group, command_argv, fail, handle_errors
from normbench.cli_edge import sigterm_as_interrupt as _sigterm_as_interrupt  # the name the commands use
from normbench.errors import ConfigError
from normbench.values import parse_ints, parse_names

app = typer.Typer(
    name="normbench",
    help="A lab bench for normalization layers: train, sweep, report.",
    cls=Group,
    epilog="Example: normbench run configs/quickstart.yaml, then normbench report results",
    no_args_is_help=True,
    rich_markup_mode="rich",  # help text escapes literal brackets: 'normbench\\[ray]'
    pretty_exceptions_enable=False,
)
console = Console()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"normbench {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """A lab bench for normalization layers: train, sweep, report."""


SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="KEY=VALUE", help="Override a config key, e.g. --set norm.type=group (repeatable)."),
]
ResultsDirOption = Annotated[Path, typer.Option("--results-dir", help="Folder for run directories.")]
DataDirOption = Annotated[
    Optional[Path],
    typer.Option("--data-dir", help="Dataset folder (overrides the config's dataset.data_dir and $NORMBENCH_DATA)."),
]


@app.command(cls=Command, epilog="Example: normbench run configs/quickstart.yaml --set norm.type=group")
@handle_errors
def run(
    config: Annotated[Optional[Path], typer.Argument(help="YAML config file, e.g. configs/quickstart.yaml.")] = None,
    set_: SetOption = None,
    results_dir: ResultsDirOption = Path("results"),
    data_dir: DataDirOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the resolved config; train nothing.")] = False,
    nproc: Annotated[Optional[int], typer.Option(
        "--nproc", min=1, metavar="N", help="Train data-parallel over N local processes (gloo on CPU, nccl on CUDA); batch_size is the global batch.",
    )] = None,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", metavar="RUN_DIR", help="Continue a failed, interrupted or killed run from its checkpoint.",
    )] = None,
    name: Annotated[Optional[str], typer.Option("--name", metavar="NAME", help=(
        "Run name (sets the config's name; the directory is NAME-<time>). Default: the config's name plus the "
        "--set overrides, e.g. quickstart-norm=group-bs=8-<time>."))] = None,
    ctx: typer.Context = None,
) -> None:
    """Train one config and write its run directory (config.yaml, meta.json, steps.csv, epochs.csv, model.pt)."""
    from normbench.config import dump, load_config
    from normbench.train import dispatch

    if config is None and resume is None:
        raise ConfigError("missing CONFIG: pass a YAML config (e.g. configs/quickstart.yaml) or --resume RUN_DIR")
    overrides = [*(set_ or []), *([f"name={name}"] if name is not None else [])]
    cfg = load_config(config, overrides) if config is not None else None
    if dry_run and cfg is not None:
        dispatch.check(cfg, nproc)
        typer.echo(dump(cfg), nl=False)
        return
    _sigterm_as_interrupt()
    if resume is not None:
        outcomes = dispatch.resume_run(resume, cfg, nproc, data_dir, console)
    else:
        # `pack` says how seeds run, not what they are; packed runs append their own seed
        skip = {"pack", "seed"} if cfg.pack > 1 else {"pack"}
        tagged = [o for o in set_ or [] if o.partition("=")[0].strip() not in skip]
        named = name is not None or not tagged or any(o.partition("=")[0].strip() == "name" for o in tagged)
        run_name = None if named else f"{cfg.name}-{dispatch.override_tag(tagged)}"
        outcomes = dispatch.start(cfg, nproc, results_dir, data_dir, console, run_name)
    if outcomes is None:  # a torchrun rank other than 0: rank 0 reports
        return
    for outcome in outcomes:
        dispatch.record_command(outcome.run_dir, command_argv(ctx), set_ or [])
        if outcome.status == "completed":
            final = outcome.final
            console.print(
                f"[green]completed[/] {outcome.label or outcome.run_dir.name}: test_acc [bold]{final['final_test_acc']:.4f}[/] "
                f"test_loss {final['final_test_loss']:.4f} after {final['samples_seen']:,} samples "
                f"({final['mean_samples_per_s']:,.0f} samples/s)",
                highlight=False, soft_wrap=True,
            )
            console.print(f"run directory: {outcome.run_dir}", highlight=False, soft_wrap=True)
    bad = [o for o in outcomes if o.status != "completed"]
    if bad:
        worst = bad[0]
        prefix = f"{len(bad)} of {len(outcomes)} packed runs did not complete; first: " if len(outcomes) > 1 else ""
        fail(f"{prefix}run {worst.status}: {worst.reason}; results so far in {worst.run_dir}", worst.exit_code)


def batch_size_list(text: str) -> list[int]:
    """`--batch-sizes 2,8,64` as a list of positive integers (values.parse_ints)."""
    return list(parse_ints(text, "--batch-sizes", 1, "--batch-sizes 2,8,64"))


def norm_list(text: str) -> list[str]:
    """`--norms batch,group` as a list of names (values.parse_names); each is validated with the config."""
    return list(parse_names(text, "--norms", "--norms batch,group"))


@app.command(cls=Command, epilog=(
    "Example: normbench bench --norms batch,group,layer --batch-sizes 2,8,64 --no-memory"))
@handle_errors
def bench(
    config: Annotated[
        Optional[Path], typer.Option("--config", help="Base config (default: the seed CNN, batch norm, Fashion-MNIST, Adam).")
    ] = None,
    set_: SetOption = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "2,8,64",
    norms: Annotated[str, typer.Option("--norms", help="Comma-separated norms (see `normbench norms`).")] = "batch",
    device: Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | mps (default: the config's).")] = None,
    precision: Annotated[
        Optional[str], typer.Option("--precision", help="fp32 | bf16 | fp16 for normbench's path; the plain loop is fp32.")
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps per measurement.")] = 200,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Alternating measurements of each path.")] = 3,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Measure peak memory in fresh processes.")] = True,
    pack: Annotated[
        Optional[int], typer.Option("--pack", min=2, help="Instead: K seeds packed (pack: K) vs K sequential runs.")
    ] = None,
    results_dir: ResultsDirOption = Path("results"),
    data_dir: DataDirOption = None,
) -> None:
    """Time normbench's training path against the plain PyTorch loop on the same work; write results/bench/<time>.csv."""
    from normbench.bench import harness, vs_plain
    from normbench.bench import pack as pack_bench

    overrides = [*(set_ or []), *([f"device={device}"] if device is not None else []),
                 *([f"precision={precision}"] if precision is not None else [])]
    base = harness.bench_base(config, overrides)
    sizes, norm_names = batch_size_list(batch_sizes), norm_list(norms)
    for _, point, _ in harness.each_point(base, sizes, norm_names, steps):  # every point valid before anything runs
        if pack is not None:
            pack_bench.packed_config(point, pack)
    _sigterm_as_interrupt()
    console.print(harness.environment_line(base), highlight=False)
    console.print(harness.cpu_line(harness.read_cpuinfo()), highlight=False)
    total = harness.progress_total(len(sizes) * len(norm_names), repeats, memory and pack is None)
    with harness.progress_bar(console, total) as progress:
        if pack is not None:
            bench_module = pack_bench
            rows = pack_bench.run_pack_bench(base, sizes, norm_names, steps, repeats, pack, data_dir=data_dir, progress=progress)
        else:
            bench_module = vs_plain
            rows = vs_plain.run_bench(base, sizes, norm_names, steps, repeats, data_dir=data_dir, measure_mem=memory,
                                      progress=progress)
    console.print(bench_module.table(rows))
    console.print(f"wrote {bench_module.write_csv(rows, results_dir)}", highlight=False, soft_wrap=True)


@app.command("eval", cls=Command, epilog=(
    "Example: normbench eval results/runs/quickstart-20261204-120000 --batch-stats"))
@handle_errors
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A completed run's directory (it holds model.pt).")],
    split: Annotated[str, typer.Option("--split", help="test, val or train.")] = "test",
    batch_stats: Annotated[bool, typer.Option(
        "--batch-stats", help="Normalize each batch with its own statistics (train-mode batch norm, nothing updated).",
    )] = False,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", min=1, help="Evaluation batch size (default: the run's batch size with --batch-stats or "
        "--precise-bn, else its eval_batch_size).",
    )] = None,
    precise_bn: Annotated[Optional[int], typer.Option(
        "--precise-bn", min=1, metavar="N", help="Recompute batch-norm statistics over N training batches first.",
    )] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Evaluate a run's saved model again; print loss and accuracy and append them to eval.csv."""
    from normbench.train.saved import EVAL_FILE, evaluate_saved

    row = evaluate_saved(run_dir, split, batch_stats, batch_size, precise_bn, data_dir)
    console.print(f"{row['split']} {row['statistics']} statistics, batch {row['batch_size']}: "
                  f"loss {row['loss']:.4f} acc [bold]{row['acc']:.4f}[/] over {row['samples']:,} samples",
                  highlight=False)
    console.print(f"appended to {Path(run_dir) / EVAL_FILE}", highlight=False, soft_wrap=True)


@app.command(cls=Command, epilog="Example: normbench norms, then normbench sweep --norms batch,group,layer")
def norms() -> None:
    """List the registered normalization layers and what each normalizes over."""
    from normbench.norms import NORMS
    from normbench.sweep.view import narrow_table

    table = narrow_table([("name", "left"), ("what", "left"), ("maps (N,C,H,W)", "left"), ("features (N,F)", "left"),
                          ("batch", "left")])
    table.title, table.caption = "normbench norms", "batch: whether a sample's output depends on the rest of its batch"
    for spec in NORMS.values():
        table.add_row(spec.name, spec.summary, spec.maps, spec.features, "yes" if spec.batch_dependent else "no")
    console.print(table)


WorkersOption = Annotated[str, typer.Option(
    "--workers", metavar="KIND", help=(
        "processes or threads: run --jobs points in worker processes, or in threads of this process "
        "sharing one CUDA context (on cuda: with cuda_graph false)."),
)]
PackSeedsOption = Annotated[str, typer.Option(
    "--pack-seeds", metavar="MODE", help=(
        "auto, on or off: train each grid point's seeds as one packed model (pack: K) where packing is exact; "
        "auto packs on a CUDA device only. One run directory and index row per seed either way."),
)]


@app.command(cls=Command, epilog="Example: normbench sweep --norms batch,group --batch-sizes 2,8,64")
@handle_errors
def sweep(
    config: Annotated[
        Optional[Path], typer.Argument(help="Base YAML config; default: the shipped configs/sweep_base.yaml (Fashion-MNIST, cnn).")
    ] = None,
    batch_sizes: Annotated[Optional[str], typer.Option("--batch-sizes", help="Batch sizes, e.g. 2,8,64 (default: the base config's).")] = None,
    norms: Annotated[Optional[str], typer.Option("--norms", help=(
        "Norm types, e.g. batch,group (default: the norm given with --set norm.type=..., else every registered "
        "norm, see `normbench norms`; a norm in the CONFIG file does not narrow the default)."))] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Seeds, e.g. 0,1,2 (default: the base config's one seed).")] = None,
    grid: Annotated[
        Optional[list[str]], typer.Option("--grid", metavar="KEY=v1,v2", help="Sweep any config key too, e.g. --grid optimizer.lr=0.1,0.01 (repeatable).")
    ] = None,
    tune: Annotated[
        Optional[list[str]], typer.Option("--tune", metavar="KEY=v1,v2", help="Train each value, then keep per grid point the one with the best val_acc, e.g. --tune optimizer.lr=0.01,0.003 (repeatable).")
    ] = None,
    set_: SetOption = None,
    lr_scaling: Annotated[
        str, typer.Option("--lr-scaling", help="Scale lr with batch_size / the base batch size: none, linear or sqrt.")
    ] = "none",
    jobs: Annotated[
        Optional[int], typer.Option("--jobs", help="Points at once (default: one per CPU core on CPU, 1 on a GPU).")
    ] = None,
    workers: WorkersOption = "processes",
    name: Annotated[Optional[str], typer.Option("--name", help="Sweep name (default: base name + a hash of base, grid and lr scaling).")] = None,
    results_dir: ResultsDirOption = Path("results"),
    data_dir: DataDirOption = None,
    retry_diverged: Annotated[bool, typer.Option("--retry-diverged", help="Rerun points that diverged before.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; train nothing.")] = False,
    executor: Annotated[str, typer.Option(
        "--executor", help="local: worker processes on this machine; ray: one Ray task per point (pip install 'normbench\\[ray]').",
    )] = "local",
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", metavar="HOST:PORT", help="Ray cluster head to submit to (default: start a local Ray instance).",
    )] = None,
    ray_retries: Annotated[int, typer.Option(
        "--ray-retries", help="Reruns of a point whose Ray worker died before it is recorded as failed.",
    )] = 1,
    pack_seeds: PackSeedsOption = "auto",
    ctx: typer.Context = None,
) -> None:
    """Train every point of a grid (norms x batch sizes x seeds x --grid) into results/sweeps/NAME; resumable."""
    from normbench.sweep.grid import command_axes, parse_grid
    from normbench.sweep.plan import load_base, run_sweep

    base = load_base(config, set_ or [])
    axes, norms_from = command_axes(
        base, set_ or [], norm_list(norms) if norms is not None else None,
        batch_size_list(batch_sizes) if batch_sizes is not None else None,
        parse_ints(seeds, "--seeds", 0, "--seeds 0,1,2") if seeds is not None else None,
        parse_grid(grid or []) + parse_grid(tune or [], "--tune"),
    )
    _sigterm_as_interrupt()
    code = run_sweep(base, axes, console, lr_scaling=lr_scaling, jobs=jobs, name=name, results_dir=results_dir,
                     data_dir=data_dir, retry_diverged=retry_diverged, dry_run=dry_run, norms_from=norms_from,
                     command={"argv": command_argv(ctx), "overrides": set_ or []},
                     executor=executor, ray_address=ray_address, ray_retries=ray_retries, pack_seeds=pack_seeds,
                     worker_kind=workers)
    if code:
        raise typer.Exit(code)


@app.command(cls=Command, epilog="Example: normbench report results/sweeps/sweep_base-1a2b3c4d")
@handle_errors
def report(
    paths: Annotated[
        Optional[list[Path]], typer.Argument(help="Run directories, sweep directories or results roots (default: results/).")
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: report/ inside the first PATH).")] = None,
) -> None:
    """Plot loss curves, test error, throughput and accuracy gap vs batch size; write summary.csv and report.md."""
    from normbench.report.build import run_report

    run_report(paths or [], out, console)


@app.command(cls=Command, epilog="Example: normbench configs, then normbench run repro/gn_resnet20")
@handle_errors
def configs() -> None:
    """List the shipped configs: pass a name to `run` or `sweep`, e.g. `normbench run quickstart`."""
    from rich.table import Table

    from normbench.configfile import describe, shipped_dir, shipped_names

    table = Table(title=f"normbench configs ({shipped_dir()})")
    table.add_column("name", no_wrap=True)
    table.add_column("what")
    for name in shipped_names():
        table.add_row(name, describe(shipped_dir() / f"{name}.yaml"))
    console.print(table)


export_app = typer.Typer(help="Export results into other tools.", no_args_is_help=True, cls=Group,
                         epilog="Example: normbench export mlflow results")
app.add_typer(export_app, name="export")


@export_app.command("mlflow", cls=Command,
                    epilog="Example: normbench export mlflow results --tracking-uri mlruns, then mlflow ui")
@handle_errors
def export_mlflow(
    paths: Annotated[list[Path], typer.Argument(metavar="RESULTS...", help="Run directories, sweep directories or results roots.")],
    tracking_uri: Annotated[str, typer.Option(
        "--tracking-uri", help="MLflow tracking store: a folder (a local file store) or a URI.")] = "mlruns",
    experiment: Annotated[str, typer.Option("--experiment", help="MLflow experiment to write into.")] = "normbench",
) -> None:
    """Write runs (config as params, CSV columns as metrics, files as artifacts) into MLflow; again: new runs only (pip install 'normbench\\[mlflow]')."""
    from normbench.export.mlflow import export_mlflow as export

    counts = export(paths, tracking_uri, experiment)
    console.print(f"exported {counts['exported']} run(s) and {counts['reports']} report(s) to {tracking_uri} "
                  f"(experiment {experiment}); {counts['already']} already there, {counts['skipped']} unusable skipped")


def main() -> None:
    """Entry point of the console script and `python -m normbench`."""
    app()
