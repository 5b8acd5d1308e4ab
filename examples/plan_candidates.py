"""A plan and its candidates.

Every quantity runs as a compiled plan. `tnderiv.plan` shows it before anything runs: the
simplified diagram, the kernel of each step (gathers, a convolution, a GEMM), FLOPs under the
dense model (every index pattern a dense tensor) and under the structure-aware model, sizes, peak
memory, and the candidate contraction orders it scored, with the one it chose.

This example plans the weight VJP and the per-sample gradient of a strided convolution, prints
each plan and a table of its candidates, draws their scores, runs the chosen plan and checks it
against `torch.autograd`, and shows how `memory_limit=` splits a contraction into chunks.
Writes `candidates.png`.
"""

import matplotlib.pyplot as plt
import torch

import tnderiv

conv = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
x = torch.randn(8, 16, 28, 28)
grad_out = torch.randn(8, 32, 14, 14)
shapes = {"x": x.shape, "grad_out": grad_out.shape}

plans = {q: tnderiv.plan(conv, shapes, quantity=q) for q in ("vjp_weight", "per_sample_grad_weight")}
for quantity, plan in plans.items():
    print(f"== {quantity}\n{plan}\n")
    print(f"| {'candidate':<28} | {'FLOPs (structure)':>17} | {'FLOPs (dense)':>15} | {'peak elements':>13} | {'score':>12} |")
    print(f"|{'-' * 30}|{'-' * 19}|{'-' * 17}|{'-' * 15}|{'-' * 14}|")
    for c in plan.candidates:
        name = ("→ " if c.chosen else "  ") + c.name
        print(f"| {name:<28} | {c.flops:>17,} | {c.flops_dense:>15,} | {c.peak_size:>13,} | {c.time:>12,.0f} |")
    print()

# the chosen plan runs with the operands by name; torch.autograd is the oracle
out = conv(x.requires_grad_())
(expected,) = torch.autograd.grad(out, conv.weight, grad_out)
got = plans["vjp_weight"](x=x.detach(), grad_out=grad_out)
assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4), (got - expected).abs().max()
print(f"vjp_weight {list(got.shape)} matches torch.autograd (max abs. difference {float((got - expected).abs().max()):.1e})")

# a memory limit: per-sample gradients [8, 32, 16, 3, 3] are contracted a few samples at a time
limited = tnderiv.plan(conv, shapes, quantity="per_sample_grad_weight", memory_limit=64 * 1024)
print(f"per_sample_grad_weight with memory_limit=64 KiB: chunks={limited.to_dict()['chunks']}")

fig, axes = plt.subplots(1, len(plans), figsize=(11, 3.2))
for ax, (quantity, plan) in zip(axes, plans.items()):
    names = [c.name for c in plan.candidates]
    scores = [c.time for c in plan.candidates]
    colors = ["C3" if c.chosen else "0.7" for c in plan.candidates]
    ax.barh(range(len(names)), scores, color=colors)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("cost-model score (lower is better)")
    ax.set_title(f"{quantity}: candidates (chosen in red)", fontsize=10)
fig.tight_layout()
fig.savefig("candidates.png", dpi=110)
