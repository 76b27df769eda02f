"""Issue 16's bench table: each row's median ratio and its range over several runs."""

from __future__ import annotations

from loadtests.bench_table import Row, medians, render, rows


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


def _run(with_reads: bool) -> dict[str, object]:
    phase = {
        "cpu_ms_per_job": 30.0,
        "floor_ms_per_job": 3.0,
        "ledger_ms_per_job": 5.0,
        "ledger_ceiling_jobs_per_s": 200.0,
        "by_process_ms_per_job": {"actor: ledger": 5.0},
    }
    results: dict[str, object] = {
        "cpu": {"steady": phase, "burst": phase,
                "floor": {"ledger_floor_ms_per_job": 0.1, "ledger_floor_jobs_per_s": 10_000.0}},
        "utilization": {"completed_per_s": 13.0, "bound_per_s": 14.0},
        "overhead": {"jobline": {"p99_s": 1.2}, "direct": {"p99_s": 1.0}},
        "ledger": {"ledger_ops_per_s": 20.0, "raw_rows_per_s": 100.0,
                   "ledger_ops_per_cpu_s": 30.0, "raw_rows_per_cpu_s": 100.0, "cpu_ratio": 0.3},
    }  # fmt: skip
    if with_reads:
        reads = {"jobline_per_s": 1.0, "bare_per_s": 4.0}
        results |= {"accepts": reads, "status_reads": reads, "status_reads_live": reads}
    return results


def test_a_run_without_the_gateways_rows_leaves_them_out() -> None:
    every = {row.measure: row for row in rows(_run(with_reads=True))}
    ledger_only = {row.measure: row for row in rows(_run(with_reads=False))}
    gateway = {m for m in every if m.startswith(("accepts", "status reads"))}
    assert len(gateway) == 3 and set(every) - set(ledger_only) == gateway
    assert every["  the same per CPU second"].ratio == 0.3
    assert ledger_only["vendor-slot utilization vs Σ limit/latency"].jobline == 13.0


def test_the_gateways_cpu_per_request_is_a_row_next_to_the_bare_servers() -> None:
    results = _run(with_reads=True)
    timed = {"jobline_per_s": 1.0, "bare_per_s": 4.0, "jobline_cpu_ms": 0.9, "bare_cpu_ms": 0.3}
    results |= {"accepts": timed, "status_reads": timed, "status_reads_live": timed}
    every = {row.measure: row for row in rows(results)}
    accept = every["  gateway CPU ms per accept vs bare"]
    assert (accept.jobline, accept.floor) == (0.9, 0.3) and round(accept.ratio, 6) == 3.0
    assert "  gateway CPU ms per read, live jobs" in every
    # Saved results from before the CPU was measured still make the rest of the table.
    assert "  gateway CPU ms per accept vs bare" not in {r.measure for r in rows(_run(True))}
