"""What `normbench bench` prints: the CPU header from /proc/cpuinfo, a progress bar on a terminal
and, piped, only plain lines and tables."""

import io

from rich.console import Console

from normbench.bench import harness
from normbench.cli import app

from test_bench import TINY_SET

FLAGS = "fpu vme sse2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_tile"
CPUINFO = f"processor\t: 0\nmodel name\t: Test CPU 9000 @ 3.00GHz\nflags\t\t: {FLAGS}\n\nprocessor\t: 1\n"


def test_cpu_line_names_the_model_and_each_isa_feature():
    line = harness.cpu_line(CPUINFO)
    assert line == ("CPU: Test CPU 9000 @ 3.00GHz\n"
                    "ISA: AVX512F yes, AVX512-BF16 yes, AMX-BF16 no, AMX-TILE yes, AVX2 yes")


def test_cpu_line_without_flags_or_cpuinfo_says_unknown():
    assert harness.cpu_line("model name : Apple M9\n") == "CPU: Apple M9\nISA: unknown (no flags in /proc/cpuinfo)"
    assert harness.cpu_line("") == "CPU: unknown model\nISA: unknown (no flags in /proc/cpuinfo)"


def test_the_progress_bar_shows_on_a_terminal_and_counts_measurements():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80)
    with harness.progress_bar(console, harness.progress_total(2, 3, memory=False)) as progress:
        for step in range(8):
            progress(f"batch 64, group: repeat {step}")
            console.file.flush()
    text = out.getvalue()
    assert "batch 64, group: repeat" in text and "8/8" in text and "\x1b[" in text


def test_piped_bench_output_has_no_progress_bar_control_characters(runner, tmp_path):
    result = runner.invoke(app, ["bench", *TINY_SET, "--batch-sizes", "4", "--norms", "batch,group",
                                 "--steps", "2", "--repeats", "1", "--no-memory", "--results-dir", str(tmp_path)],
                           env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\r" not in result.output
    assert "warm-up" not in result.output and "repeat 1/1" not in result.output  # the bar's descriptions
    lines = result.stdout.splitlines()
    assert any(line.startswith("CPU: ") for line in lines) and any(line.startswith("ISA: AVX512F ") for line in lines)
    # the table and header fit 80 columns; the CSV's path is printed whole (never cut)
    assert max(len(line) for line in result.stdout.splitlines() if not line.startswith("wrote ")) <= 80
