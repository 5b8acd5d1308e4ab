"""Data-parallel ``compute_over``: 2 processes (``torch.multiprocessing`` spawn, ``gloo`` on 127.0.0.1) all-reduce
to exactly the single-process results on the whole batch, in float64.

Rank 0 holds samples 0-1 as two batches of one, rank 1 samples 2-4 as one batch (unequal everywhere). Each rank
saves its result; the test compares them with ``compute`` on all 5 samples in this process.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from curvature_cases import CASES

from tnderiv.model import Curvature, ExactCurvature

TOL = {"rtol": 1e-10, "atol": 1e-13}
SHARDS = {0: [(0, 1), (1, 2)], 1: [(2, 5)]}
CASE = "tied"  # cross-entropy on [N, S, V] with ignore_index (unequal token counts per rank), a tied fallback weight
SUMS = ("grad", "sum_grad_squared", "variance", "ggn_diag", "ggn_block")
SETTINGS = {"type-2": {}, "empirical": {"fisher": "empirical", "loss_average": "batch+positions", "approx": "reduce"}}


def _tensors(res, quantities) -> dict[str, torch.Tensor]:
    out = {"loss": res.loss.reshape(())}
    for m in res:
        for q in quantities:
            if q == "kfac":
                k = res[m]["kfac"]
                out[f"{m}/kfac/dense"] = k.to_dense()
                if not isinstance(k, ExactCurvature):
                    out[f"{m}/kfac/A"], out[f"{m}/kfac/G"] = k.A, k.G
            else:
                for p, t in res[m][q].items():
                    out[f"{m}/{q}/{p}"] = t
    return out


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        case = CASES[CASE]
        model, x, y = case.make(n=5)
        batches = [(x[a:b], y[a:b]) for a, b in SHARDS[rank]]
        results = {}
        for fisher, kwargs in SETTINGS.items():
            # the empirical pass names its process group explicitly (process_group=), type-2 finds WORLD itself
            group = dist.new_group([0, 1]) if fisher == "empirical" else None
            curv = Curvature(model, case.loss(), process_group=group, **kwargs)
            q = (*SUMS, "per_sample_grad", "kfac") if fisher == "type-2" else ("kfac",)
            results[fisher] = _tensors(curv.compute_over(batches, q, set_grad=fisher == "type-2"), q)
        results["grads"] = {n: p.grad for n, p in model.named_parameters()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available")
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    ctx = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 180
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("the 2 ranks did not finish within 180 s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    case = CASES[CASE]
    model, x, y = case.make(n=5)
    for fisher, kwargs in SETTINGS.items():
        curv = Curvature(model, case.loss(), **kwargs)
        q = (*SUMS, "per_sample_grad", "kfac") if fisher == "type-2" else ("kfac",)
        whole = _tensors(curv.compute(x, y, q, set_grad=fisher == "type-2"), q)
        for key, expected in whole.items():
            if "/per_sample_grad/" in key:  # each rank keeps its own samples, scaled by the global divisor
                got = torch.cat([ranks[0][fisher][key], ranks[1][fisher][key]])
                torch.testing.assert_close(got, expected, **TOL)
                continue
            for r in range(2):
                torch.testing.assert_close(ranks[r][fisher][key].to(expected.dtype), expected, **TOL, msg=lambda m, k=key, r=r: f"rank {r}, {k}: {m}")
        assert set(ranks[0][fisher]) == set(whole)
    for n, p in model.named_parameters():  # .grad on every rank: the all-reduced gradient of the whole batch
        for r in range(2):
            torch.testing.assert_close(ranks[r]["grads"][n], p.grad, **TOL)
