"""Cockpit-style gradient statistics over training steps.

Cockpit-like instruments need more than the mini-batch gradient: the norms of the per-sample
gradients and their inner products. `tnderiv.grad_stats` computes them for one layer from its input
and the gradient at its output, without materializing the per-sample gradients where contracting
is cheaper. This example tracks them over 30 steps of SGD on a small CNN, with Cockpit's
batch-size tests, and plots them.

Hooks collect inputs and output gradients of every layer during ordinary SGD training; each step
then records

- the mini-batch gradient norm `‖ḡ‖` and the spread of the per-sample gradient norms `‖g_n‖`
  (`batch_l2`, summed over layers and parameters),
- Cockpit's three batch-size tests, from `batch_l2` (`‖g_n‖²`, `[N]`) and `batch_dot`
  (`g_nᵀ g_m`, `[N, N]`), with `p_n = g_nᵀ ḡ`: the norm test (Byrd et al., 2012)
  `Σ_n ‖g_n − ḡ‖² / (N (N − 1) ‖ḡ‖²)`, the inner-product test (Bollapragada et al., 2018)
  `Σ_n (p_n − ‖ḡ‖²)² / (N (N − 1) ‖ḡ‖⁴)` and the orthogonality test
  `Σ_n (‖g_n‖² − p_n² / ‖ḡ‖²) / (N (N − 1) ‖ḡ‖²)`; a value above 1 says the batch is too small
  for the step.

At the first step every statistic is checked against per-sample gradients computed one sample at a
time with `torch.autograd`. Writes `gradient_statistics.png`.
"""

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import tnderiv

STEPS, N, LR = 30, 32, 0.2
torch.manual_seed(0)
x = torch.randn(N, 1, 8, 8)
y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long()  # is the upper half brighter?
net = torch.nn.Sequential(
    torch.nn.Conv2d(1, 4, 3, padding=1),
    torch.nn.ReLU(),
    torch.nn.Flatten(),
    torch.nn.Linear(4 * 8 * 8, 2),
)
layers = [net[0], net[3]]
inputs, grad_outs = {}, {}


def forward_hook(layer, args, out):
    inputs[layer] = args[0].detach()
    out.register_hook(lambda g: grad_outs.__setitem__(layer, g.detach()))


for layer in layers:
    layer.register_forward_hook(forward_hook)


def autograd_per_sample() -> list[torch.Tensor]:
    """The oracle: each sample's gradient (all parameters, flattened), one backward pass per sample."""
    rows = []
    for n in range(N):
        loss_n = F.cross_entropy(net(x[n : n + 1]), y[n : n + 1], reduction="sum")
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss_n, list(net.parameters()))]))
    return torch.stack(rows)


history = {"loss": [], "grad_norm": [], "sample_norms": [], "norm": [], "inner product": [], "orthogonality": []}
opt = torch.optim.SGD(net.parameters(), lr=LR / N)  # the summed loss's gradient is N times the mean's
for step in range(STEPS):
    # summed loss: the gradient at each layer's output is then each sample's own loss gradient
    loss = F.cross_entropy(net(x), y, reduction="sum")
    opt.zero_grad()
    loss.backward()
    batch_l2, batch_dot = torch.zeros(N), torch.zeros(N, N)
    for layer in layers:
        stats = tnderiv.grad_stats(layer, inputs[layer], grad_outs[layer], ("batch_l2", "batch_dot"))
        for param in ("weight", "bias"):
            batch_l2 += stats["batch_l2"][param]  # ‖g_n‖² of this parameter, [N]
            batch_dot += stats["batch_dot"][param]  # g_nᵀ g_m of this parameter, [N, N]
    mean_grad = torch.cat([p.grad.flatten() for p in net.parameters()]) / N  # ḡ = (1/N) Σ_n g_n
    mean_sq = float(mean_grad.square().sum())
    if step == 0:
        g = autograd_per_sample()
        assert torch.allclose(batch_l2, g.square().sum(1), rtol=1e-4, atol=1e-6)
        assert torch.allclose(batch_dot, g @ g.T, rtol=1e-4, atol=1e-5)
        assert torch.allclose(mean_grad, g.mean(0), atol=1e-6)
        print("step 0: batch_l2, batch_dot and the mean gradient agree with per-sample torch.autograd\n")
    history["loss"].append(loss.item() / N)
    history["grad_norm"].append(mean_sq**0.5)
    history["sample_norms"].append(batch_l2.sqrt())
    p = batch_dot.mean(1)  # p_n = g_nᵀ ḡ
    scale = N * (N - 1) * mean_sq
    history["norm"].append(float(batch_l2.sum() - N * mean_sq) / scale)
    history["inner product"].append(float((p - mean_sq).square().sum()) / (scale * mean_sq))
    history["orthogonality"].append(float((batch_l2 - p.square() / mean_sq).sum()) / scale)
    opt.step()

print(f"{'step':>4} | {'loss':>6} | {'‖ḡ‖':>6} | {'median ‖g_n‖':>12} | {'norm':>6} | {'inner product':>13} | {'orthogonality':>13}")
for step in (*range(0, STEPS, 5), STEPS - 1):
    print(
        f"{step:>4} | {history['loss'][step]:6.3f} | {history['grad_norm'][step]:6.3f} | "
        f"{float(history['sample_norms'][step].median()):12.3f} | {history['norm'][step]:6.3f} | "
        f"{history['inner product'][step]:13.3f} | {history['orthogonality'][step]:13.3f}"
    )

norms = torch.stack(history["sample_norms"])  # [STEPS, N]
steps = range(STEPS)
fig, (ax_loss, ax_norm, ax_test) = plt.subplots(1, 3, figsize=(12, 3.4))
ax_loss.plot(steps, history["loss"], color="C0")
ax_loss.set_title("training loss")
ax_norm.fill_between(steps, norms.quantile(0.1, 1), norms.quantile(0.9, 1), color="C1", alpha=0.3, label="‖g_n‖, 10–90 %")
ax_norm.plot(steps, norms.median(1).values, color="C1", label="‖g_n‖, median")
ax_norm.plot(steps, history["grad_norm"], color="k", label="‖ḡ‖ (mini-batch)")
ax_norm.set_title("gradient norms (batch_l2)")
ax_norm.legend(frameon=False, fontsize=8)
for i, test in enumerate(("norm", "inner product", "orthogonality")):
    ax_test.plot(steps, history[test], color=f"C{i + 2}", label=f"{test} test")
ax_test.axhline(1, color="0.5", ls=":", lw=1)
ax_test.set_yscale("log")
ax_test.set_title("batch-size tests (batch_l2, batch_dot)")
ax_test.legend(frameon=False, fontsize=8)
for ax in (ax_loss, ax_norm, ax_test):
    ax.set_xlabel("step")
fig.tight_layout()
fig.savefig("gradient_statistics.png", dpi=110)
