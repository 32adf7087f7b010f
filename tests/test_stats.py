"""normbench.report.stats against hand-computed values: t quantiles from printed tables, closed-form
t CDFs, Welch and paired t-tests worked by hand, and the t density integrated by Simpson's rule."""

import csv
import math
from pathlib import Path

import pytest

from normbench.cli import app

from normbench.report.stats import (
    incomplete_beta, mean_interval, paired, t_cdf, t_quantile, two_sided_p, welch,
)


def t_density(t: float, df: float) -> float:
    front = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    return front * (1 + t * t / df) ** (-(df + 1) / 2)


def simpson_cdf(t: float, df: float, intervals: int = 4000) -> float:
    """P(T <= t) as 1/2 plus the density integrated from 0 to t: independent of the beta function."""
    h = t / intervals
    total = t_density(0, df) + t_density(t, df)
    total += sum((4 if i % 2 else 2) * t_density(i * h, df) for i in range(1, intervals))
    return 0.5 + total * h / 3


@pytest.mark.parametrize("p, df, table", [
    (0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 3, 3.182), (0.975, 4, 2.776), (0.975, 5, 2.571),
    (0.975, 10, 2.228), (0.975, 30, 2.042), (0.975, 120, 1.980), (0.95, 10, 1.812), (0.995, 5, 4.032),
])
def test_t_quantile_matches_printed_tables(p, df, table):
    assert t_quantile(p, df) == pytest.approx(table, abs=5e-4)
    assert t_quantile(1 - p, df) == pytest.approx(-table, abs=5e-4)  # symmetric


def test_t_quantile_tends_to_the_normal_quantile():
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)


@pytest.mark.parametrize("t", [-3.0, -0.5, 0.0, 0.7, 2.0, 12.706])
def test_t_cdf_matches_closed_forms(t):
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    root = math.sqrt(1 + t * t / 4)
    assert t_cdf(t, 4) == pytest.approx(0.5 + 3 / 8 * t / root * (1 - t * t / (12 * root**2)), abs=1e-12)


@pytest.mark.parametrize("t, df", [(1.1338934, 3.2347194), (0.4, 7.5), (2.5, 2.6), (-1.7, 11.3)])
def test_t_cdf_and_quantile_at_fractional_df_match_the_integrated_density(t, df):
    assert t_cdf(t, df) == pytest.approx(simpson_cdf(t, df), abs=1e-9)
    assert t_quantile(simpson_cdf(t, df), df) == pytest.approx(t, abs=1e-7)


def test_incomplete_beta_special_cases():
    for x in (0.0, 0.1, 0.5, 0.93, 1.0):
        assert incomplete_beta(x, 1, 1) == pytest.approx(x, abs=1e-14)
        assert incomplete_beta(x, 3, 1) == pytest.approx(x**3, abs=1e-14)
        assert incomplete_beta(x, 1, 2.5) == pytest.approx(1 - (1 - x) ** 2.5, abs=1e-14)
    assert incomplete_beta(0.5, 7.3, 7.3) == pytest.approx(0.5, abs=1e-14)
    with pytest.raises(ValueError):
        incomplete_beta(1.5, 1, 1)


def test_two_sided_p_hand_values():
    assert two_sided_p(2.0, 2) == pytest.approx(1 - 2 / math.sqrt(6), abs=1e-12)  # 0.183503
    assert two_sided_p(2.228, 10) == pytest.approx(0.05, abs=2e-4)
    assert two_sided_p(0.0, 5) == pytest.approx(1.0)


def test_mean_interval_hand_values():
    mean, half = mean_interval([0.70, 0.74])  # s = 0.028284, s / sqrt(2) = 0.02, t(0.975, 1) = 12.706
    assert mean == pytest.approx(0.72) and half == pytest.approx(12.7062 * 0.02, abs=1e-5)
    mean, half = mean_interval([1, 2, 3, 4, 5])  # s = 1.58114, se = 0.70711, t(0.975, 4) = 2.77645
    assert mean == 3 and half == pytest.approx(2.77645 * 0.707107, abs=1e-4)
    mean, half = mean_interval([0.9])
    assert mean == 0.9 and math.isnan(half)  # one seed: no interval


def test_welch_hand_worked_example():
    # a: mean 2.5, var 5/3; b: mean 4, var 4. se^2 = 5/12 + 4/3 = 1.75; t = -1.5 / 1.322876 = -1.133893;
    # df = 1.75^2 / ((5/12)^2 / 3 + (4/3)^2 / 2) = 3.0625 / 0.946759 = 3.234719
    result = welch([1, 2, 3, 4], [2, 4, 6])
    assert result.difference == pytest.approx(-1.5)
    assert result.df == pytest.approx(3.234719, abs=1e-6)
    assert result.p_value == pytest.approx(2 * (1 - simpson_cdf(1.1338934, 3.2347194)), abs=1e-6)
    half = t_quantile(0.975, 3.234719) * math.sqrt(1.75)
    assert (result.low, result.high) == (pytest.approx(-1.5 - half), pytest.approx(-1.5 + half))
    assert 2.776 < t_quantile(0.975, 3.234719) < 3.182  # between the table's df 4 and df 3
    assert (result.n_a, result.n_b, result.kind) == (4, 3, "welch")


def test_paired_hand_worked_example():
    # per-seed differences -0.18, -0.13, -0.18: mean -0.163333, sd 0.028868, se 0.016667, t = -9.8, df 2;
    # p = 1 - 9.8 / sqrt(2 + 9.8^2) = 0.010254; interval -0.163333 +- 4.302653 * 0.016667
    result = paired([0.70, 0.74, 0.72], [0.88, 0.87, 0.90])
    assert result.difference == pytest.approx(-0.163333, abs=1e-6)
    assert result.df == 2 and result.p_value == pytest.approx(1 - 9.8 / math.sqrt(2 + 9.8**2), abs=1e-6)
    assert result.low == pytest.approx(-0.163333 - 4.302653 * 0.0166667, abs=1e-5)
    assert result.high == pytest.approx(-0.163333 + 4.302653 * 0.0166667, abs=1e-5)
    # seeds that move both norms together: pairing removes the seed-to-seed spread, Welch cannot
    a, b = [0.70, 0.80, 0.90], [0.68, 0.79, 0.87]
    assert paired(a, b).p_value < 0.1 < 0.8 < welch(a, b).p_value


def test_no_uncertainty_without_two_values_or_any_spread():
    for result in (welch([0.8], [0.7, 0.75]), paired([0.8], [0.7]), welch([0.8, 0.8], [0.7, 0.7]),
                   paired([3, 5], [1, 3])):
        assert math.isnan(result.p_value) and math.isnan(result.low) and math.isnan(result.high)
    assert welch([0.8], [0.7, 0.75]).difference == pytest.approx(0.075)
    with pytest.raises(ValueError):
        paired([1, 2], [1])


# The report: summary.csv intervals, report.md's tests, the figure's bars. Test errors (%) by seed:
# batch 30, 26, 28 (mean 28, s 2); group 12, 13, 10 (mean 11.667, s 1.5275); per-seed differences
# 18, 13, 18 (mean 16.333, s 2.8868, se 1.6667, t 9.8, df 2, p 0.0103, CI 16.33 +- 7.17).
# Welch: se^2 = 4/3 + 2.3333/3 = 2.1111, t = 11.24, df 3.74, p 0.0005, CI 16.33 +- 4.15.
THREE_SEEDS = {("batch", 0): 0.70, ("batch", 1): 0.74, ("batch", 2): 0.72,
               ("group", 0): 0.88, ("group", 1): 0.87, ("group", 2): 0.90}


def report_of(runner, root, seeds_acc, out):
    from test_report import write_run

    for (norm, seed), acc in seeds_acc.items():
        write_run(root, f"{norm}-{seed}", norm, 8, seed, acc, acc)
    result = runner.invoke(app, ["report", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    with open(out / "summary.csv", newline="") as f:
        summary = {r["norm"]: r for r in csv.DictReader(f)}
    return summary, (out / "report.md").read_text()


def test_report_gives_intervals_and_welch_and_paired_tests_by_hand_values(runner, tmp_path):
    summary, report = report_of(runner, tmp_path / "runs", THREE_SEEDS, tmp_path / "out")
    assert float(summary["batch"]["test_error_pct_ci95"]) == pytest.approx(4.3027 * 2 / math.sqrt(3), abs=0.006)
    assert float(summary["group"]["test_acc_ci95"]) == pytest.approx(4.3027 * 0.015275 / math.sqrt(3), abs=6e-5)
    assert "test error batch 28.00 ± 4.97 %, group 11.67 ± 3.79 %." in report
    assert "Batch norm is 16.33 points above the best batch-independent norm (group, 11.67 %)." in report
    assert "95 % CI of the difference [12.19, 20.48] points, Welch t-test p < 0.001 (df 3.7, n = 3 and 3)" in report
    assert "paired by seed: [9.16, 23.50] points, paired t-test p = 0.010 (n = 3)." in report


def test_unmatched_seeds_get_welch_only_and_one_seed_gets_no_uncertainty(runner, tmp_path):
    unmatched = {**THREE_SEEDS, ("group", 3): 0.89}
    del unmatched[("group", 0)]
    _, report = report_of(runner, tmp_path / "a", unmatched, tmp_path / "out-a")
    assert "Welch t-test" in report and "paired by seed" not in report
    summary, report = report_of(runner, tmp_path / "b", {("batch", 0): 0.70, ("group", 0): 0.88}, tmp_path / "out-b")
    assert summary["batch"]["test_acc_ci95"] == ""  # one seed: no interval in the CSV either
    assert "With 1 seed(s) for batch and 1 for group, no uncertainty can be given" in report
    assert "test error batch 30.00 %, group 12.00 %." in report


def test_figure_error_bars_are_the_summary_intervals(runner, tmp_path, monkeypatch):
    from normbench.report import figures

    drawn = {}
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.setdefault(Path(path).name, fig) and Path(path))
    summary, _ = report_of(runner, tmp_path / "runs", THREE_SEEDS, tmp_path / "out")
    (ax,) = drawn["test_error_by_norm_synthetic_cnn.png"].axes  # one batch size
    bars = {}
    for container, label in zip(ax.containers, ax.get_legend_handles_labels()[1]):
        (segment,) = container.lines[2][0].get_segments()
        bars[label] = (segment[1][1] - segment[0][1]) / 2
    assert bars == {norm: pytest.approx(float(summary[norm]["test_error_pct_ci95"]), abs=0.006)
                    for norm in ("batch", "group")}
    assert "95 % confidence interval of the mean" in ax.get_title()


def test_differences_equal_up_to_float_rounding_have_no_spread():
    # 0.91 - 0.90 and 0.90 - 0.89 differ in the 17th digit: that is no spread to test
    assert mean_interval([0.91 - 0.90, 0.90 - 0.89])[1] == 0.0
    assert math.isnan(paired([0.91, 0.90], [0.90, 0.89]).p_value)
