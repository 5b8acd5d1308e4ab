"""memsave against plain torch on ResNet-18 (eval-mode batch norm): saved bytes, peak memory, time.

    .venv/bin/python -m benchmarks.bench_memsave [--batch 8] [--size 224] [--repeat 5]

For each configuration (which tensors need gradients) and each model (torch's, ``tnderiv.memsave``'s
copy) one forward + backward of a cross-entropy loss is measured:

- saved bytes: every tensor autograd saves, seen by ``torch.autograd.graph.saved_tensors_hooks``,
  counted once per storage; split into parameters/buffers (resident anyway) and activations;
- peak memory: a fresh subprocess per configuration and model runs one warm-up step, resets the
  kernel's peak-RSS counter (``/proc/self/clear_refs``), runs one step and reports ``VmHWM`` minus
  the RSS before the step (Linux);
- time: median wall and CPU (calling thread) seconds of ``--repeat`` steps, the two models interleaved
  in one process, one torch thread (CPU time is what the targets are judged on: the machine is shared).

Results go to ``docs/benchmarks/memsave.json`` (and are printed as a table).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

import tnderiv
from benchmarks.models_zoo import ResNet18

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "memsave.json"
CONFIGS = {
    "input_only": "gradient of the input only (every parameter frozen)",
    "norm_only": "batch-norm parameters trainable, everything else frozen, no input gradient",
    "all": "every parameter trainable, no input gradient",
}
# "memsave_no_mask": memsave with torch's own ReLU (keeps its output): isolates what the ReLU masks cost
MODELS = ("torch", "memsave", "memsave_no_mask")
PEAK_MODELS = ("torch", "memsave")


def build(model: str, config: str, batch: int, size: int) -> tuple[nn.Module, Callable[[], None]]:
    """The model in eval mode with the configuration's trainable tensors, and one forward + backward step."""
    torch.manual_seed(0)
    net = ResNet18(1000, inplace=True).eval()
    with torch.no_grad():  # non-trivial running statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    net.requires_grad_(config == "all")
    for m in net.modules():
        if config == "norm_only" and isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(True)
    if model.startswith("memsave"):
        net = tnderiv.memsave(net)
    if model == "memsave_no_mask":
        for m in net.modules():
            if isinstance(m, nn.ReLU):
                m.__class__ = nn.ReLU
    x = torch.randn(batch, 3, size, size, requires_grad=config == "input_only")
    labels = torch.randint(0, 1000, (batch,))

    def step() -> None:
        net.zero_grad(set_to_none=True)
        x.grad = None
        F.cross_entropy(net(x), labels).backward()

    return net, step


def saved_bytes(net: nn.Module, step: Callable[[], None]) -> dict[str, int]:
    """Bytes of the storages autograd saves in one forward (each storage once): activations and parameters."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    own = {t.untyped_storage().data_ptr() for t in (*net.parameters(), *net.buffers())}
    params = sum(n for ptr, n in storages.items() if ptr in own)
    return {"activations": sum(storages.values()) - params, "params_buffers": params, "total": sum(storages.values())}


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _hwm_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def peak_child(model: str, config: str, batch: int, size: int) -> dict[str, float]:
    """(In a fresh process) peak RSS growth of one step after a warm-up step, in MiB.

    The parent sets ``MALLOC_MMAP_THRESHOLD_`` so that large tensors are mapped and unmapped (RSS
    follows the live tensors); ``malloc_trim`` returns what the warm-up step freed.
    """
    _, step = build(model, config, batch, size)
    step()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _rss_kib()
    step()
    return {"peak_mib": (_hwm_kib() - before) / 1024}


def peak_memory(model: str, config: str, batch: int, size: int) -> float:
    command = [sys.executable, "-m", "benchmarks.bench_memsave", "--child", model, config, "--batch", str(batch), "--size", str(size),
               "--threads", str(torch.get_num_threads())]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 16)}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"])


def times(config: str, batch: int, size: int, repeat: int) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds per step, the two models interleaved (one warm-up step each).

    With one torch thread all work runs on the calling thread, so its CPU time does not count the
    time other processes on a shared machine take the core away (wall time does).
    """
    steps = {model: build(model, config, batch, size)[1] for model in MODELS}
    for step in steps.values():
        step()
    samples: dict[str, dict[str, list[float]]] = {model: {"wall": [], "cpu": []} for model in MODELS}
    for _ in range(repeat):
        for model, step in steps.items():
            wall, cpu = time.perf_counter(), time.thread_time()
            step()
            samples[model]["cpu"].append(time.thread_time() - cpu)
            samples[model]["wall"].append(time.perf_counter() - wall)
    return samples


def check_equal(config: str) -> float:
    """Largest difference of the gradients of the memsave models to torch (float64, small input): the run is also a test."""
    grads = []
    for model in MODELS:
        net, _ = build(model, config, 2, 64)
        net = net.double()
        x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        x.requires_grad_(config == "input_only")
        out = net(x).sum()
        wanted = [x] if config == "input_only" else [p for p in net.parameters() if p.requires_grad]
        grads.append(torch.autograd.grad(out, wanted))
    reference, *others = grads
    return max(float((a - b).abs().max()) for other in others for a, b in zip(reference, other))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(peak_child(*args.child, args.batch, args.size)))
        return
    results: dict[str, Any] = {
        "setup": {
            "model": "ResNet-18 (torchvision layout, defined in benchmarks/bench_memsave.py), eval-mode batch norm",
            "input": [args.batch, 3, args.size, args.size],
            "dtype": "float32",
            "loss": "cross_entropy",
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "repeat": args.repeat,
            "peak_memory": "fresh subprocess per cell, MALLOC_MMAP_THRESHOLD_=65536; VmHWM over one step minus RSS before "
            "it (after a warm-up step, malloc_trim and a reset of VmHWM)",
        },
        "configs": {},
    }
    started = time.perf_counter()
    for config in args.configs:
        cell: dict[str, Any] = {"description": CONFIGS[config], "max_grad_diff_float64": check_equal(config)}
        for model in MODELS:
            net, step = build(model, config, args.batch, args.size)
            cell[model] = {"saved_bytes": saved_bytes(net, step)}
            if model in PEAK_MODELS:
                cell[model]["peak_mib"] = peak_memory(model, config, args.batch, args.size)
            del net, step
        samples = times(config, args.batch, args.size, args.repeat)
        for model in MODELS:
            wall, cpu = samples[model]["wall"], samples[model]["cpu"]
            cell[model]["seconds"] = statistics.median(wall)
            cell[model]["cpu_seconds"] = statistics.median(cpu)
            cell[model]["samples"] = {"wall": [round(s, 4) for s in wall], "cpu": [round(s, 4) for s in cpu]}
        t, m = cell["torch"], cell["memsave"]
        cell["ratios"] = {
            "saved_activation_bytes": m["saved_bytes"]["activations"] / t["saved_bytes"]["activations"],
            "saved_total_bytes": m["saved_bytes"]["total"] / t["saved_bytes"]["total"],
            "peak": m["peak_mib"] / t["peak_mib"] if t["peak_mib"] > 0 else float("nan"),
            "time": m["seconds"] / t["seconds"],
            "cpu_time": m["cpu_seconds"] / t["cpu_seconds"],
            "cpu_time_paired": _paired(samples, "memsave"),
            "cpu_time_no_mask": cell["memsave_no_mask"]["cpu_seconds"] / t["cpu_seconds"],
            "cpu_time_no_mask_paired": _paired(samples, "memsave_no_mask"),
            "saved_activation_bytes_no_mask": cell["memsave_no_mask"]["saved_bytes"]["activations"]
            / t["saved_bytes"]["activations"],
        }
        results["configs"][config] = cell
        print(_row(config, cell), flush=True)
    results["setup"]["run_seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


def _paired(samples: dict[str, dict[str, list[float]]], model: str) -> float:
    """Median over rounds of the CPU-time ratio to torch's step of the same round (load drifts between rounds)."""
    return statistics.median(a / b for a, b in zip(samples[model]["cpu"], samples["torch"]["cpu"]))


def _row(config: str, cell: dict[str, Any]) -> str:
    t, m, r = cell["torch"], cell["memsave"], cell["ratios"]
    mib = 2**20
    return (
        f"{config:10s} saved activations {t['saved_bytes']['activations'] / mib:7.1f} → {m['saved_bytes']['activations'] / mib:7.1f} MiB "
        f"({r['saved_activation_bytes']:.2f}x)  total {t['saved_bytes']['total'] / mib:7.1f} → {m['saved_bytes']['total'] / mib:7.1f} MiB "
        f"({r['saved_total_bytes']:.2f}x)  peak {t['peak_mib']:7.1f} → {m['peak_mib']:7.1f} MiB ({r['peak']:.2f}x)  "
        f"time {t['seconds']:.3f} → {m['seconds']:.3f} s ({r['time']:.3f}x; CPU {t['cpu_seconds']:.3f} → {m['cpu_seconds']:.3f} s, {r['cpu_time']:.3f}x, paired {r['cpu_time_paired']:.3f}x)  "
        f"without ReLU masks: CPU {r['cpu_time_no_mask']:.3f}x, paired {r['cpu_time_no_mask_paired']:.3f}x, saved {r['saved_activation_bytes_no_mask']:.2f}x  "
        f"max |Δgrad| {cell['max_grad_diff_float64']:.1e}"
    )


if __name__ == "__main__":
    main()
