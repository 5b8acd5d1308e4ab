"""The harness end to end on tiny layers: checks, statuses, JSON and the generated page (never timings' values)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import cases, quantities
from benchmarks.__main__ import main
from benchmarks.cases import Case
from benchmarks.impls import IMPLS, Missing, Prepared
from benchmarks.report import write_report
from benchmarks.runner import Runner, Settings, compare
from benchmarks.timing import peak_memory, time_interleaved

TINY = Case(
    "tiny/conv", "general", "conv",
    (("dims", 2), ("in_channels", 3), ("out_channels", 4), ("kernel_size", (3, 3)), ("stride", (1, 1)),
     ("padding", (1, 1)), ("dilation", (1, 1)), ("groups", 1), ("bias", True), ("padding_mode", "zeros")),
    batch=2, input_shape=(3, 6, 6),
)
REFLECT = Case("probe/tiny-reflect", "probe", "conv", tuple({**dict(TINY.args), "padding_mode": "reflect"}.items()),
               batch=2, input_shape=(3, 6, 6))


def test_compare_statuses() -> None:
    w = torch.arange(1.0, 7.0, dtype=torch.float64).reshape(2, 3)
    assert compare(w.clone(), w, 1e-9)[0] == "ok"
    status, note, _ = compare(2 * w, w, 1e-9)
    assert status == "wrong" and "factor 0.5" in note
    status, note, _ = compare(w.T, w, 1e-9)
    assert status == "wrong" and "shape" in note
    status, note, _ = compare({"A": w}, {"A": w, "G": w}, 1e-9)
    assert status == "ok" and "not checked: G" in note
    assert compare(w + torch.randn_like(w), w, 1e-9)[0] == "wrong"


def test_interleaved_timing_structure() -> None:
    calls = {"a": lambda: torch.ones(8).sum(), "b": lambda: torch.zeros(8).sum()}
    timings = time_interleaved(calls, repeat=3, warmup=1, device="cpu", min_sample_s=0.0, budget_s=10.0)
    assert set(timings) == {"a", "b"}
    for t in timings.values():
        assert len(t.samples) >= 2 and t.number >= 1 and t.median > 0


def test_cpu_peak_memory_sees_an_allocation() -> None:
    peak = peak_memory(lambda: torch.empty(1 << 20, dtype=torch.float32).fill_(1.0), "cpu")
    if peak is None:
        pytest.skip("torch's private memory profiler is unavailable in this torch build")
    assert peak >= 4 << 20


def test_runner_checks_times_and_reports(tmp_path: Path) -> None:
    settings = Settings(repeat=2, warmup=1, check_batch=None, budget_s=0.2, min_sample_s=0.0, memory=False)
    runner = Runner(settings)
    qs = quantities.parse_quantities(["forward", "per_sample_grad"])
    runner.run([REFLECT, TINY], qs)
    data = runner.to_json([REFLECT, TINY], qs, "test", {"gflops": 1.0, "size": 8}, {"threads": 1, "tf32": False})
    by = {(r["layer"], r["quantity"], r["impl"]): r for r in data["results"]}
    # the references are always there and correct, on every setting
    for layer in (REFLECT.id, TINY.id):
        assert by[(layer, "forward", "torch")]["status"] == "ok"
        assert by[(layer, "per_sample_grad", "unfold")]["status"] == "ok"
    timed = by[(TINY.id, "per_sample_grad", "unfold")]
    assert timed["median_s"] > 0 and timed["ratio_vs_reference"] == pytest.approx(1.0)
    assert "median_s" not in by[(REFLECT.id, "forward", "torch")]  # probes are checked, not timed
    if IMPLS["forward"] and any(i.name == "einconv" and i.available() for i in IMPLS["forward"]):
        assert by[(REFLECT.id, "forward", "einconv")]["status"] == "wrong"  # einconv ignores padding_mode
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(data, default=str))
    page = tmp_path / "benchmarks.md"
    write_report([path], page)
    text = page.read_text()
    for heading in ("## Reproduce", "Targets from issues 3 and 7", "Correctness", "GPU numbers are pending", "tiny/conv"):
        assert heading in text


def test_missing_implementation_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import impls

    def setup(problem):  # noqa: ANN001, ANN202
        raise Missing("tnderiv.nothing does not exist in this checkout")

    impl = impls.Impl("forward", "ghost", setup)
    monkeypatch.setitem(IMPLS, "forward", [*IMPLS["forward"], impl])
    runner = Runner(Settings(repeat=1, warmup=1, check_batch=None, memory=False, overhead=False, budget_s=0.1))
    runner.run([TINY], quantities.parse_quantities(["forward"]))
    ghost = [r for r in runner.records if r["impl"] == "ghost"]
    assert ghost and ghost[0]["status"] == "missing" and "does not exist" in ghost[0]["note"]
    assert Prepared(lambda: 1).extract(3) == 3


def test_suite_sizes_follow_the_issue() -> None:
    cpu = cases.suite_cases("cpu")
    gpu = cases.suite_cases("cuda")
    assert len(cpu) == len(gpu) == 36
    assert {c.batch for c in cpu} == {8} and {c.batch for c in gpu} == {32}
    resnet_cpu = next(c for c in cpu if c.id == "resnet18/conv1")
    assert resnet_cpu.input_shape == (3, 112, 112)
    assert all(all(s > 0 for s in c.output_shape()) for c in cpu)


def test_cli_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="valid quantities"):
        main(["run", "--quantities", "hessian_of_everything", "--out", "/dev/null"])
    with pytest.raises(SystemExit):
        main(["run", "--device", "tpu"])


def test_a_call_past_the_limit_is_reported_as_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from benchmarks import impls

    def setup(problem):  # noqa: ANN001, ANN202
        def call():  # noqa: ANN202
            end = time.perf_counter() + 5
            while time.perf_counter() < end:
                pass

        return Prepared(call)

    monkeypatch.setitem(IMPLS, "forward", [*IMPLS["forward"], impls.Impl("forward", "sloth", setup)])
    runner = Runner(Settings(repeat=1, warmup=0, check_batch=None, memory=False, overhead=False, call_limit_s=0.2))
    runner.run([TINY], quantities.parse_quantities(["forward"]))
    sloth = next(r for r in runner.records if r["impl"] == "sloth")
    assert sloth["status"] == "timeout" and "median_s" not in sloth
