"""`normbench sweep`: run every point of a grid, resumably, in one or more worker processes.

Layout of a sweep, `<results>/sweeps/<name>/`:
  sweep.yaml        the base config, the grid and the lr scaling (what defines the sweep)
  runs/<point-id>/  one run directory per point, the same layout as `normbench run`
  index.csv         one row per point, rewritten atomically from the run directories' meta.json
                    (one row per seed, whether the seeds trained packed or alone)
  logs/<point-id>.log  what the point's worker wrote to stderr (warnings), one section per attempt

The run directories are the source of truth: a point whose meta.json says `completed` is never
run again; anything else (failed, interrupted, killed mid-run) is cleared and rerun, diverged
ones only when asked.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import yaml

from normbench import results
from normbench.config import Config, to_dict
from normbench.configfile import shipped_dir
from normbench.errors import EXIT_DIVERGED, EXIT_ERROR, EXIT_OK, ConfigError, NormbenchError
from normbench.runtime import cpu_cores
from normbench.sweep.executor import LocalPlan
from normbench.sweep.threads import WORKER_KINDS
from normbench.sweep.grid import Axis, Point, spec_digest
from normbench.sweep.packing import mode_line, pack_enabled, pack_label, plan_units
from normbench.sweep.tuning import record, select, tune_keys
from normbench.sweep.point import PackTask, PointTask

SWEEPS_DIR, LOCK_FILE, RUNS_DIR = "sweeps", ".lock", "runs"
SWEEP_FILE, INDEX_FILE = results.SWEEP_FILE, results.INDEX_FILE
LOGS_DIR = "logs"  # logs/<point-id>.log: what each point's worker wrote to stderr (torch warnings, ...)
INDEX_TAIL = ("lr", "status", "reason", "run_dir", "val_acc", "val_loss", "test_acc", "samples_per_s", "wall_s")
DEFAULT_BASE = shipped_dir() / "sweep_base.yaml"  # normbench/configs/ when installed, else the checkout's configs/


def index_columns(axes: list[Axis]) -> tuple[str, ...]:
    """index.csv columns: the point id, one column per grid key, then INDEX_TAIL (and `selected`
    in a tuned sweep)."""
    return ("point", *(a.key for a in axes), *INDEX_TAIL, *(("selected",) if tune_keys(axes) else ()))


def plan_workers(base: Config, jobs: int | None, device_type: str, cores: int) -> tuple[int, int]:
    """(worker processes, torch threads per point) so that workers x threads <= cores.

    Auto (`jobs=None`): one process per core on CPU (small batches gain little from threads, a
    lot from processes), one on a GPU. Threads: the base config's `num_threads`, else cores // jobs.
    """
    if jobs is None:
        jobs = 1 if device_type != "cpu" else max(1, cores // (base.num_threads or 1))
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be at least 1")
    threads = base.num_threads or max(1, cores // jobs)
    if device_type == "cpu" and jobs * threads > cores:
        raise ConfigError(f"--jobs {jobs} x num_threads {threads} exceeds the {cores} CPU cores; lower --jobs or num_threads")
    return jobs, threads


def plan_executor(base: Config, executor: str, jobs: int | None, ray_address: str | None, ray_retries: int,
                  worker_kind: str = "processes"):
    """The executor's plan (LocalPlan or ray_executor.RayPlan) after checking its options."""
    from normbench.runtime import resolve_device

    if worker_kind not in WORKER_KINDS:
        raise ConfigError(f"--workers {worker_kind}: valid values are {', '.join(WORKER_KINDS)}")
    if executor == "ray" and worker_kind != "processes":
        raise ConfigError("--workers is for --executor local; Ray runs each point in a worker process of its own")
    if executor == "ray":  # Ray decides how many points run at once, from each point's CPUs and GPUs
        from normbench.sweep.ray_executor import plan_ray

        return plan_ray(base, jobs, ray_address, ray_retries)
    if executor != "local":
        raise ConfigError(f"--executor {executor}: valid values are local, ray")
    if ray_address:
        raise ConfigError("--ray-address needs --executor ray")
    device = resolve_device(base.device)  # an unavailable device is a sweep-level error
    if worker_kind == "threads" and device.type == "cuda" and base.cuda_graph is not False:
        raise ConfigError("--workers threads on cuda needs cuda_graph: false (a graph capture in one thread "
                          "breaks the other threads' CUDA work); --set cuda_graph=false, or use --workers processes")
    return LocalPlan(*plan_workers(base, jobs, device.type, cpu_cores()), device.type, worker_kind)


def point_state(meta: dict | None, exists: bool, retry_diverged: bool) -> tuple[bool, str]:
    """(run it?, what the plan says) for a point's run directory."""
    if not exists:
        return True, "run"
    status = (meta or {}).get("status", "incomplete")
    if status == "completed":
        return False, "done (skip)"
    if status == "diverged":
        return (True, "rerun (diverged)") if retry_diverged else (False, "diverged (skip)")
    return True, f"rerun ({status})"


# --- the sweep ------------------------------------------------------------------------------


class Sweep:
    """A sweep directory: its spec (sweep.yaml), points, run directories and index.csv."""

    def __init__(self, path: Path, base: Config, axes: list[Axis], lr_scaling: str, points: list[Point],
                 command: dict | None = None):
        self.path, self.base, self.axes, self.lr_scaling, self.points = Path(path), base, axes, lr_scaling, points
        self.command = command or {}  # argv and overrides of the sweep command, recorded with each point

    def run_path(self, point: Point) -> Path:
        """Where a point's run directory goes."""
        return self.path / RUNS_DIR / point.point_id

    def continues_alone(self, point: Point) -> bool:
        """Whether the point's run directory holds an unpacked run that a rerun continues from its checkpoint."""
        from normbench.train.resume import can_resume

        path = self.run_path(point)
        return path.exists() and not (results.read_meta(path) or {}).get("pack") and can_resume(path)

    def spec(self) -> dict:
        """What sweep.yaml holds."""
        spec = {"base": to_dict(self.base), "grid": {a.key: list(a.values) for a in self.axes}, "lr_scaling": self.lr_scaling}
        return {**spec, "tune": keys} if (keys := tune_keys(self.axes)) else spec

    def write_spec(self) -> None:
        """Create sweep.yaml, or check that an existing one describes this same sweep."""
        file = self.path / SWEEP_FILE
        spec = self.spec()
        if file.exists():
            try:
                old = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise NormbenchError(f"cannot read {file}: {exc}; remove it or choose another --name") from None
            if {k: old.get(k) for k in spec} != spec:
                raise NormbenchError(
                    f"sweep '{self.path.name}' exists with a different base config, grid or lr scaling "
                    f"(see {file}); use the same options to resume it or another --name")
            return
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomic(file, yaml.safe_dump({"name": self.path.name, "created": results.now_iso(), **spec}, sort_keys=False))

    def states(self, retry_diverged: bool) -> list[tuple[Point, bool, str]]:
        """(point, run it?, plan label) for every point."""
        out = []
        for point in self.points:
            if point.invalid:
                out.append((point, False, "invalid"))
                continue
            path = self.run_path(point)
            out.append((point, *point_state(results.read_meta(path), path.exists(), retry_diverged)))
        return out

    def index_rows(self) -> list[dict]:
        """One index row per point, read from its run directory's meta.json."""
        rows = []
        for point in self.points:
            row = {"point": point.point_id, **point.values}
            path = self.run_path(point)
            meta = results.read_meta(path) if not point.invalid else None
            if point.invalid:
                status, reason = "invalid", point.invalid
            elif meta is None:
                status, reason = ("incomplete" if path.exists() else "pending"), ""
            else:
                status, reason = meta.get("status", "incomplete"), meta.get("reason") or ""
            meta = meta or {}
            row.update(
                lr=point.config.optimizer.lr if point.config else "",
                status=status, reason=reason,
                run_dir=f"{RUNS_DIR}/{point.point_id}" if path.exists() else "",
                val_acc=meta.get("final_val_acc") if status == "completed" else "",
                val_loss=meta.get("final_val_loss") if status == "completed" else "",
                test_acc=meta.get("final_test_acc") if status == "completed" else "",
                samples_per_s=meta.get("mean_samples_per_s") if status == "completed" else "",
                wall_s=(meta.get("sweep") or {}).get("wall_s", ""),
            )
            rows.append(row)
        return rows

    def write_index(self) -> list[dict]:
        """Rewrite index.csv atomically from the run directories; returns its rows."""
        rows = self.index_rows()
        if tune_keys(self.axes):
            selected = select(rows, self.axes)
            for row, chosen in zip(rows, selected):
                row["selected"] = chosen
            record(rows, selected, lambda row: self.path / RUNS_DIR / row["point"], tune_keys(self.axes))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=index_columns(self.axes), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: results.format_value(v) for k, v in row.items()})
        _write_atomic(self.path / INDEX_FILE, buffer.getvalue())
        return rows

    def task(self, unit: Point | list[Point], data_dir) -> PointTask | PackTask:
        """The picklable task for one valid point, or for a list of them (one grid point's seeds) packed."""
        if isinstance(unit, list):
            if len(unit) > 1:
                return PackTask(pack_label(unit), tuple(self.task(p, data_dir) for p in unit))
            unit = unit[0]
        info = {"name": self.path.name, "values": unit.values, **unit.info, **self.command}
        return PointTask(unit.point_id, to_dict(unit.config), str(self.run_path(unit)),
                         str(data_dir) if data_dir else None, info, str(self.path / LOGS_DIR / f"{unit.point_id}.log"))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class SweepLock:
    """An exclusive lock on a sweep directory, so two sweeps never run the same points at once;
    the OS drops it when the process dies, even by SIGKILL."""

    def __init__(self, path: Path):
        self.file = Path(path) / LOCK_FILE
        self.handle = None

    def __enter__(self):
        self.handle = open(self.file, "a+")
        try:
            import fcntl

            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no flock (Windows): run unlocked
            pass
        except OSError:
            self.handle.close()
            raise NormbenchError(f"sweep '{self.file.parent.name}' is being run by another normbench process; wait for it or stop it") from None
        return self

    def __exit__(self, *exc):
        self.handle.close()


def exit_code(rows: list[dict]) -> int:
    """1 if any point failed or is incomplete, else 3 if any diverged, else 0."""
    statuses = {row["status"] for row in rows}
    if statuses & {"failed", "running", "interrupted", "incomplete", "pending"}:
        return EXIT_ERROR
    return EXIT_DIVERGED if "diverged" in statuses else EXIT_OK


# --- the command ------------------------------------------------------------------------------


def load_base(config_path: Path | None, overrides: list[str]) -> Config:
    """The base config: CONFIG, or the shipped configs/sweep_base.yaml; `--set` applied."""
    from normbench.config import load_config

    if config_path is None:
        if not DEFAULT_BASE.is_file():
            raise NormbenchError(f"the default base config {DEFAULT_BASE} is missing; pass a CONFIG file")
        config_path = DEFAULT_BASE
    return load_config(config_path, overrides)


def budget_text(base: Config) -> str:
    """The equal training budget every point gets, in words."""
    if base.max_samples:
        return f"{base.max_samples:,} training samples"
    return f"{base.epochs} epoch(s) of training samples"


def run_sweep(
    base: Config, axes: list[Axis], console, *, lr_scaling: str = "none", jobs: int | None = None,
    name: str | None = None, results_dir: Path = Path("results"), data_dir: Path | None = None,
    retry_diverged: bool = False, dry_run: bool = False, executor: str = "local", ray_address: str | None = None,
    ray_retries: int = 1, norms_from: str = "--norms", command: dict | None = None, pack_seeds: str = "auto",
    worker_kind: str = "processes",
) -> int:
    """Plan, print the plan, run what is left, write index.csv, print the summary; returns the exit code.
    `command` (argv, overrides) goes into each point's meta.json under `sweep`; `pack_seeds`
    (auto, on, off) says whether each grid point's seeds train as one packed model; `worker_kind`
    (processes, threads) what runs several points at once locally."""
    from normbench.data import val_count
    from normbench.sweep.grid import expand
    from normbench.sweep.view import SweepProgress, plan_header, plan_table

    if tune_keys(axes) and val_count(base.dataset, 10**9) == 0:
        raise ConfigError("--tune selects by val_acc, but the base config has no validation split "
                          "(dataset.val_samples is 0); set dataset.val_samples")
    if base.pack > 1:
        raise ConfigError(f"the base config sets pack={base.pack}; a sweep packs each point's seeds itself: "
                          "set pack: 1 and pass --pack-seeds on")
    plan = plan_executor(base, executor, jobs, ray_address, ray_retries, worker_kind)
    packing = pack_enabled(pack_seeds, plan.device_type)
    points = expand(base, axes, lr_scaling, plan.threads)
    if all(p.invalid for p in points):
        raise ConfigError(f"every point of the grid is invalid, e.g. {points[0].point_id}: {points[0].invalid}")
    name = name or f"{base.name}-{spec_digest(base, axes, lr_scaling)}"
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"--name {name}: use letters, digits, '.', '_' and '-' only")
    sweep = Sweep(results.ensure_writable(Path(results_dir)) / SWEEPS_DIR / name, base, axes, lr_scaling, points,
                  command)
    states = sweep.states(retry_diverged)
    units, notes = plan_units([p for p, runs, _ in states if runs], packing, sweep.continues_alone)
    first, *rest = plan_header(name, axes, len(states), budget_text(base), plan.threads, plan.workers(len(units)),
                               norms_from)
    console.print(first, highlight=False, soft_wrap=True, markup=False)
    for line in [*rest, mode_line(pack_seeds, packing, plan.device_type, units)]:
        console.print(line, highlight=False, markup=False)
    console.print(plan_table(axes, states, notes))
    if dry_run:
        return EXIT_OK
    sweep.write_spec()
    with SweepLock(sweep.path):
        sweep.write_index()
        console.print("sweep directory:", highlight=False)
        console.print(str(sweep.path), highlight=False, soft_wrap=True, markup=False)
        runnable = len(points) - sum(1 for p in points if p.invalid)
        todo = sum(len(unit) for unit in units)
        with SweepProgress(console, total=runnable, done=runnable - todo, logs=sweep.path / LOGS_DIR) as view:
            plan.execute(sweep, units, view, data_dir)
        rows = sweep.write_index()
    print_summary(console, sweep, rows)
    return exit_code(rows)


def print_summary(console, sweep: Sweep, rows: list[dict]) -> None:
    """The summary table, why points did not complete, the counts, index.csv and the report command;
    paths on lines of their own, never wrapped."""
    import shlex

    from normbench.sweep.view import reason_lines, summary_table

    console.print(f"sweep {sweep.path.name}: summary", highlight=False, soft_wrap=True)
    console.print(summary_table(sweep.axes, rows))
    for line in reason_lines(rows):
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()) + "; index:", highlight=False)
    console.print(str(sweep.path / INDEX_FILE), highlight=False, soft_wrap=True, markup=False)
    console.print("report:", highlight=False)
    console.print(f"normbench report {shlex.quote(str(sweep.path))}", highlight=False, soft_wrap=True, markup=False)
