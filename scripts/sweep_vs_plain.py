"""Wall time of a normbench sweep against the same points run one after another with the plain
PyTorch loop (pytorch/examples style), in one command. Prints both and the ratio.

    .venv/bin/python scripts/sweep_vs_plain.py [--batch-sizes 2,8,64] [--norms batch,group,layer,instance,none]

The sweep runs with `--jobs` chosen automatically (one process per core on CPU); the plain loop
trains each point's exact resolved config (same budget, model, optimizer, data) with torch's
default threads, as a user running the example would.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def main() -> None:
    """Time the sweep, then the plain loop on the same points; print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="2,8,64")
    parser.add_argument("--norms", default="batch,group,layer,instance,none")
    parser.add_argument("--config", default="configs/sweep_base.yaml")
    args = parser.parse_args()

    from normbench.bench.vs_plain import time_plain_sequential
    from normbench.config import validate
    from normbench.results import environment

    results = Path(tempfile.mkdtemp(prefix="sweep-vs-plain-"))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "normbench", "sweep", args.config, "--batch-sizes", args.batch_sizes,
                           "--norms", args.norms, "--name", "timed", "--results-dir", str(results)])
    sweep_s = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"the sweep failed (exit {done.returncode}); see {results}")
    configs = []
    for path in sorted((results / "sweeps" / "timed" / "runs").glob("*/config.yaml")):
        data = yaml.safe_load(path.read_text())
        data["num_threads"] = None  # the plain loop runs as the example does: torch's default threads
        configs.append(validate(data, str(path)))
    plain_s = time_plain_sequential(configs)
    env = environment("cpu")
    print(f"# {env['device_name']}, {env['cpu_count']} cores, torch {env['torch']}")
    print(f"points: {len(configs)}  sweep (normbench, --jobs auto): {sweep_s:.1f} s  "
          f"plain loop, one after another: {plain_s:.1f} s  ratio: {plain_s / sweep_s:.2f}x")


if __name__ == "__main__":
    main()
