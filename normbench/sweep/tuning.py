"""Tuned comparisons: `normbench sweep --tune KEY=v1,v2` trains every tuning value, then each grid
point (norm x batch size x ...) keeps the value with the best final val_acc, averaged over the
point's seeds (ties: the lower mean val_loss). Selection never looks at the test split."""

from __future__ import annotations

from normbench import results


def tune_keys(axes) -> list[str]:
    """The sweep's tuning keys, in axis order."""
    return [a.key for a in axes if a.tune]


def select(rows: list[dict], axes) -> list[bool]:
    """For each index row: whether its tuning values are its grid point's selected ones. A value is
    eligible once every seed of it has completed with a val_acc."""
    keys = tune_keys(axes)
    point_keys = [a.key for a in axes if not a.tune and a.key != "seed"]
    candidates: dict[tuple, dict[tuple, list[dict]]] = {}
    for row in rows:
        point = tuple(repr(row[k]) for k in point_keys)
        candidates.setdefault(point, {}).setdefault(tuple(repr(row[k]) for k in keys), []).append(row)
    chosen = {}
    for point, options in candidates.items():
        scored = []
        for values, members in options.items():
            if all(m["status"] == "completed" and m.get("val_acc") not in (None, "") for m in members):
                accs = [float(m["val_acc"]) for m in members]
                losses = [float(m["val_loss"]) for m in members]
                scored.append((sum(accs) / len(accs), -sum(losses) / len(losses), values))
        if scored:
            best = max(scored, key=lambda s: (s[0], s[1]))  # first of equals: the order given
            chosen[point] = best[2]
    return [chosen.get(tuple(repr(row[k]) for k in point_keys)) == tuple(repr(row[k]) for k in keys) for row in rows]


def record(rows: list[dict], selected: list[bool], run_path, keys: list[str]) -> None:
    """Write each completed run's selection into its meta.json (`sweep.tuning`), where the report reads it."""
    for row, chosen in zip(rows, selected):
        if row["status"] != "completed":
            continue
        path = run_path(row)
        meta = results.read_meta(path) or {}
        sweep = meta.get("sweep") or {}
        tuning = {"keys": keys, "selected": chosen, "by": "val_acc"}
        if sweep.get("tuning") != tuning:
            results.amend_meta(path, sweep={**sweep, "tuning": tuning})
