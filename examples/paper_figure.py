"""A paper figure of a derivation, in TikZ and SVG.

The weight VJP of a strided convolution, as derived by graph surgery (cut the weight, attach
`grad_out`), then simplified rule by rule: `tnderiv.simplify(raw, trace=True)` on the unsimplified diagram
records every rewrite, and the render API draws the derivation as a strip of panels with the
rule's name under each arrow (`per_row=2`: two panels a row).

`tnderiv.render.to_tikz` gives a `tikzpicture` with its `\\tikzset` styles to `\\input` in a paper
(only the `tikz` package is needed), `standalone=True` a whole document that `pdflatex` compiles to
one cropped page, and `to_svg` the same picture without TeX. The simplified diagram's
weight VJP is checked against `torch.autograd`. Writes `derivation.svg`,
`derivation.tex` (the snippet) and `derivation_standalone.tex`; with `pdflatex` on the path, also
`derivation.pdf`.
"""

import itertools
import shutil

import torch

import tnderiv
from tnderiv import render

conv = tnderiv.Conv(4, 8, 3, dims=2, stride=2, padding=1)
raw = tnderiv.diagram(conv, "vjp_weight", simplify=False)
derivation = tnderiv.simplify(raw, trace=True)

print("derived:   ", raw)
print("simplified:", derivation.result)
print(f"\n{len(derivation.steps)} rewrites, in order (each arrow of the figure is one run of a rule):")
for rule, run in itertools.groupby(step.rule for step in derivation.steps):
    print(f"  {rule} ×{len(list(run))}")

# the simplified diagram is what runs: check its numbers against torch.autograd on a small input
x, weight = torch.randn(2, 4, 9, 9), torch.randn(8, 4, 3, 3)
y = torch.nn.functional.conv2d(x, weight.requires_grad_(), stride=2, padding=1)
grad_out = torch.randn_like(y)
(expected,) = torch.autograd.grad(y, weight, grad_out)
got = tnderiv.vjp(conv, "weight", grad_out, x=x)
assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), (got - expected).abs().max()
print(f"\nits weight VJP {list(got.shape)} matches torch.autograd")

with open("derivation.svg", "w") as f:
    f.write(render.to_svg(derivation, per_row=2))
with open("derivation.tex", "w") as f:
    f.write(render.to_tikz(derivation, per_row=2))
with open("derivation_standalone.tex", "w") as f:
    f.write(render.to_tikz(derivation, standalone=True, per_row=2))
if shutil.which("pdflatex"):
    render.save(derivation, "derivation.pdf", per_row=2)
    print("\nderivation.pdf compiled with pdflatex")
else:
    print("\npdflatex is not installed: derivation.pdf is skipped (the .tex files compile with it)")
print("\nthe TikZ snippet starts with:")
print("\n".join(render.to_tikz(derivation).splitlines()[:6]))
