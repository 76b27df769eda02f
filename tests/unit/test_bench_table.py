"""Issue 16's bench table: each row's median ratio and its range over several runs."""

from __future__ import annotations

from loadtests.bench_table import Row, medians, render


def test_medians_take_each_rows_median_ratio_and_its_range() -> None:
    runs = [
        [Row("cpu", 30.0, 3.0, "ms"), Row("accepts", 100.0, 1000.0, "/s")],
        [Row("cpu", 20.0, 4.0, "ms"), Row("accepts", 300.0, 1000.0, "/s")],
        [Row("cpu", 40.0, 2.0, "ms"), Row("accepts", 200.0, 800.0, "/s")],
    ]
    (cpu, cpu_low, cpu_high), (accepts, acc_low, acc_high) = medians(runs)
    assert cpu.measure == "cpu" and cpu.jobline == 30.0
    assert cpu.ratio == 10.0  # the median of 10, 5 and 20: ratios are taken per run
    assert (cpu_low, cpu_high) == (5.0, 20.0)
    assert accepts.ratio == 0.25  # the median of 0.1, 0.3 and 0.25
    assert (acc_low, acc_high) == (0.1, 0.3)
    text = render(medians(runs), 3, [1.0, 2.0, 3.0])
    assert "10.000" in text and "0.250" in text and "medians of 3 runs" in text
