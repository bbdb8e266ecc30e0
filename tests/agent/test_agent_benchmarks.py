"""The agent benchmarks run (small settings) and their correctness checks hold: no failed or
wrong answer under forced switches, directly and through the local HTTP API. Speed figures are
printed by the benchmarks, never asserted here."""

from __future__ import annotations

import pytest

from benchmarks import agent_hot_swap


@pytest.mark.parametrize("http", [False, True])
def test_hot_swap_benchmark_has_no_failures(http, capsys):
    argv = ["--requests", "300", "--steady-requests", "60", "--switches", "6", "--gap", "0.01", "--width", "128"]
    result = agent_hot_swap.main(argv + (["--http"] if http else []))
    assert result["failed"] == 0
    assert result["switches"] == 6
    assert result["requests"] >= 300
    assert sum(result["served_by_variant"].values()) == result["requests"]
    assert len([n for n in result["served_by_variant"].values() if n]) >= 2
    assert "FAILED REQUESTS     0" in capsys.readouterr().out


def test_batching_benchmark_runs_and_refuses_row_dependent_int8():
    from benchmarks import agent_batching
    out = agent_batching.main(["--seconds", "0.3", "--width", "128", "--threads", "4"])
    assert set(out) == {"fp32", "int8", "student"}
    assert out["fp32"]["on"]["state"] == "on" and out["student"]["on"]["state"] == "on"
    assert out["int8"]["on"]["state"].startswith("off: rows differ")     # quantize_dynamic int8
    assert all(r["off"]["rps"] > 0 and r["on"]["rps"] > 0 for r in out.values())
