"""KFAC of a convolution with reflect padding, against BackPACK.

A `Conv2d` with `padding_mode="reflect"` pads its input by mirroring the border, so the patches
that KFAC's input factor `A` averages contain mirrored pixels. tnderiv derives `A` from the layer's
diagram, padding mode included. BackPACK unfolds the input with `F.unfold`, i.e. with zeros at the
border, and returns a factor that is silently wrong for this layer.

Both are compared with an independent oracle written here with plain torch: pad with
`F.pad(mode="reflect")`, unfold, and average `a aᵀ`. The model is `conv → flatten → linear` with a
summed MSE loss, and the factors are BackPACK's exact KFLR ones (`G` from the loss Hessian's square
root pulled back to the convolution's output). Writes `kfac_factors.png`.
"""

import math
import warnings

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import tnderiv

torch.manual_seed(0)
N, C_in, C_out, H, W = 4, 2, 3, 6, 6
conv = torch.nn.Conv2d(C_in, C_out, 3, padding=1, padding_mode="reflect").double()
x = torch.randn(N, C_in, H, W, dtype=torch.float64)
out_shape = conv(x).shape[1:]
lin = torch.nn.Linear(math.prod(out_shape), 3).double()

# the root of the summed MSE loss's Hessian (√2 I per sample), pulled back through the linear layer
# to the convolution's output: S[m, n] = √2 · lin.weight[m] as an image, the same for every sample
S = (math.sqrt(2) * lin.weight.detach().reshape(-1, *out_shape))[:, None].expand(-1, N, *out_shape).contiguous()

# tnderiv: "expand" KFAC averages a aᵀ over samples and output positions; BackPACK sums over
# positions, so its A is `positions` times ours (see docs/conventions.md)
positions = math.prod(out_shape[1:])
kfac = tnderiv.kfac(conv, x, S, approx="expand")
A_tnderiv = positions * kfac.A[0]

# the oracle: reflect-pad, unfold into patches a [N, C_in·3·3, positions], average over samples
a = F.unfold(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel_size=3)
A_oracle = torch.einsum("nip,njp->ij", a, a) / N


def rel_err(A: torch.Tensor) -> float:
    return float((A - A_oracle).norm() / A_oracle.norm())


results = {"tnderiv": A_tnderiv}
try:
    from backpack import backpack, extend
    from backpack.extensions import KFLR

    model = extend(torch.nn.Sequential(conv, torch.nn.Flatten(), lin))
    loss = extend(torch.nn.MSELoss(reduction="sum"))
    warnings.filterwarnings("ignore", message="Full backward hook")  # BackPACK's hooks on an input without grad
    with backpack(KFLR()):
        loss(model(x), torch.randn(N, 3, dtype=torch.float64)).backward()
    results["BackPACK"] = conv.weight.kflr[1]
except ImportError:
    print("note: BackPACK is not installed (pip install backpack-for-pytorch); only tnderiv is compared\n")

print(f"input factor A of Conv2d({C_in}, {C_out}, 3, padding=1, padding_mode='reflect') on x {list(x.shape)}")
print(f"A has shape {list(A_oracle.shape)}; relative error against the reflect-padded unfold oracle:\n")
print(f"| {'':8} | {'rel. error of A':>15} |")
print(f"|{'-' * 10}|{'-' * 17}|")
for name, A in results.items():
    print(f"| {name:8} | {rel_err(A):15.2e} |")

# tnderiv must match the oracle to rounding; the comparison is the point of the example
assert rel_err(A_tnderiv) < 1e-12, rel_err(A_tnderiv)

fig, axes = plt.subplots(1, 2 * len(results), figsize=(3.2 * (2 * len(results)), 3.2))
panels = [("oracle (reflect unfold)", A_oracle), ("tnderiv", A_tnderiv)]
if "BackPACK" in results:
    panels += [("BackPACK", results["BackPACK"]), ("BackPACK − oracle", results["BackPACK"] - A_oracle)]
vmax = float(A_oracle.abs().max())
for ax, (title, A) in zip(axes, panels):
    im = ax.imshow(A.detach().numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
fig.colorbar(im, ax=axes, shrink=0.8)
fig.suptitle("KFAC input factor A  [C_in·k·k, C_in·k·k]  of a reflect-padded convolution", fontsize=11)
fig.savefig("kfac_factors.png", dpi=110, bbox_inches="tight")
