"""The whole-model benchmark harness end to end on a tiny CNN: checks, statuses, JSON and page (never timings' values)."""

from __future__ import annotations

import json

import torch

from benchmarks.bench_models import Plan, cold_call, run_network
from benchmarks.models_impls import Config, Prepared, tnderiv_setup
from benchmarks.models_oracles import check, oracle
from benchmarks.models_report import render
from benchmarks.models_targets import evaluate
from benchmarks.models_zoo import ZOO


def _scaled(task: str, factor: float) -> Config:
    """tnderiv's configuration with its results multiplied by ``factor``: a wrong implementation."""

    def setup(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Prepared:
        inner = tnderiv_setup(task)(model, x, y)

        def extract(result: object) -> dict[str, dict[str, torch.Tensor]]:
            return {k: {q: v * factor for q, v in qs.items()} for k, qs in inner.extract(result).items()}

        return Prepared(inner.call, extract)

    return Config("wrong", task, setup)


def test_oracle_catches_a_wrong_ggn_diagonal() -> None:
    net = ZOO["tiny"]
    model, (x, y) = net.model(torch.float64), net.data(3, torch.float64)
    reference = oracle(model, x, y)
    right = check(tnderiv_setup("ggn_diag")(model, x, y), "ggn_diag", reference, complete=True)
    assert right["status"] == "ok" and right["rel_error"] < 1e-10
    wrong = check(_scaled("ggn_diag", 1.01).setup(model, x, y), "ggn_diag", reference, complete=True)
    assert wrong["status"] == "wrong" and "factor" in wrong["note"]


def test_run_network_checks_then_times_only_correct_configurations() -> None:
    plan = Plan("tiny", ("per_sample_grad", "kfac"), batch=4, check_batch=2, repeat=2)
    result = run_network(plan, extra=[_scaled("per_sample_grad", 2.0)])
    rows = {(r["library"], r["task"]): r for r in result["rows"]}
    json.dumps(result, default=str)
    wrong = rows[("wrong", "per_sample_grad")]
    assert wrong["status"] == "wrong" and "median_s" not in wrong and "ratio" not in wrong
    for task in plan.tasks:
        row = rows[("tnderiv", task)]
        assert row["status"] == "ok", row
        assert len(row["samples_s"]) == 2 and row["ratio"] > 0
    assert rows[("torch", "grad")]["ratio"] == 1.0
    assert rows[("backpack", "kfac")]["status"] == "ok"  # KFLR, converted to tnderiv's conventions
    assert rows[("curvlinops", "kfac")]["status"] == "ok"
    assert rows[("torch.func", "per_sample_grad")]["status"] == "ok"
    data = {"meta": {"memory_method": "m", "versions": {"torch": "x"}, "device": "cpu", "cpus": 2, "date": "d",
                     "command": "c", "git_commit": "0"}, "networks": [{"model": "tiny", "describe": "tiny CNN"}],
            "rows": result["rows"], "cold": []}
    page = render(data)
    assert "## tiny" in page and "| per-sample gradients |" in page
    assert set(evaluate(data)) >= {"stats", "kfac", "cold"}


def test_cold_call_reports_first_and_warm_calls() -> None:
    entry = cold_call("tiny", "kfac", 4)
    assert entry["cold_s"] > 0 and entry["warm_s"] > 0 and entry["grad_s"] > 0
    assert entry["ratio"] == entry["cold_s"] / entry["grad_s"]
