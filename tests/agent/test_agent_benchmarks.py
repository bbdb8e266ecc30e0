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
