"""The gallery: every registered quantity of the dense, convolution and normalization layers, drawn.

``gallery_files()`` renders it in memory (``{relative path: text}``); ``write_gallery(directory)`` writes
it and removes drawings that are no longer produced. A test compares the committed ``diagrams/`` with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tnderiv.ir import Expression
from tnderiv.render.compose import Options, layout, layout_strip, strip_of_derivation
from tnderiv.render.crossings import crossing_count
from tnderiv.render.model import Picture
from tnderiv.render.spec import LAYER_KINDS, parse_spec
from tnderiv.render.svg import to_svg
from tnderiv.render.tikz import to_tikz

# (directory, spec); layers whose kind is not available (norm layers) are skipped
GALLERY_LAYERS: tuple[tuple[str, str], ...] = (
    ("dense", "linear"),
    ("dense_sequence", "linear:shared=1"),
    ("conv1d", "conv1d"),
    ("conv2d", "conv2d"),
    ("conv2d_stride2_groups2", "conv2d:stride=2,padding=1,groups=2"),
    ("conv_transpose2d", "conv_transpose2d:stride=2"),
    ("layernorm", "layernorm"),
    ("rmsnorm", "rmsnorm"),
    ("groupnorm", "groupnorm"),
    ("batchnorm2d", "batchnorm2d"),
    ("batchnorm2d_eval", "batchnorm2d:running_stats=true"),
)
FIRST = ("forward", "vjp", "jvp", "per_sample_grad")  # then the other registered quantities, by name
EXPECTED_ERRORS = (ValueError, TypeError, NotImplementedError, KeyError)


@dataclass(frozen=True)
class Entry:
    """One drawing of the gallery, or why the quantity is not defined for the layer."""

    layer: str
    spec: str
    quantity: str
    expression: Expression | None
    picture: Picture | None
    error: str = ""


def gallery_quantities(network) -> list[str]:
    """Quantity names drawn for ``network``: ``vjp``/``jvp`` per operand (``jvp`` for inputs), others at their default."""
    import tnderiv  # noqa: F401  (registers every quantity family)
    from tnderiv.calculus import QUANTITIES

    names = [n for n in FIRST if n in QUANTITIES] + sorted(n for n in QUANTITIES if n not in FIRST)
    out = []
    for name in names:
        kind = QUANTITIES[name]
        if kind.wrt == "none" or kind.default_wrt is not None:
            out.append(name)
        elif kind.wrt == "operand":
            operands = network.inputs if name == "jvp" else network.operands
            out.extend(f"{name}_{operand}" for operand in operands)
        else:
            out.extend(f"{name}_{param}" for param in network.params)
    return out


def gallery_entries(layers: tuple[tuple[str, str], ...] = GALLERY_LAYERS) -> list[Entry]:
    """Every (layer, quantity) of the gallery, derived and laid out."""
    from tnderiv.calculus import derive

    entries = []
    for layer, spec_text in layers:
        if spec_text.split(":")[0] not in LAYER_KINDS:
            continue
        spec, shapes = parse_spec(spec_text)
        network = spec.network(shapes)
        for quantity in gallery_quantities(network):
            try:
                expr = derive(network, quantity)
            except EXPECTED_ERRORS as error:
                entries.append(Entry(layer, spec_text, quantity, None, None, str(error).split("\n")[0]))
                continue
            entries.append(Entry(layer, spec_text, quantity, expr, layout(expr, Options())))
        if "weight" in network.params:
            entries.append(_derivation_entry(layer, spec_text, network))
    return entries


def _derivation_entry(layer: str, spec_text: str, network) -> Entry:
    """The strip from the forward diagram to the simplified weight VJP, one arrow per rule."""
    from tnderiv.calculus import QUANTITIES
    from tnderiv.simplify import simplify

    raw = QUANTITIES["vjp"].build(network, "weight")
    derivation = simplify(raw, trace=True)
    panels, arrows = strip_of_derivation(derivation, prefix=((network.forward, "cut weight, attach grad_out"),))
    picture = layout_strip(panels, arrows, Options(), per_row=3)
    return Entry(layer, spec_text, "derivation_vjp_weight", derivation.result, picture)


def gallery_files(
    layers: tuple[tuple[str, str], ...] = GALLERY_LAYERS, entries: list[Entry] | None = None
) -> dict[str, str]:
    """The gallery as ``{path relative to diagrams/: text}``: per drawing a ``.tex`` snippet and an ``.svg``, and README.md."""
    entries = gallery_entries(layers) if entries is None else entries
    files: dict[str, str] = {}
    for entry in entries:
        if entry.picture is not None:
            files[f"{entry.layer}/{entry.quantity}.tex"] = to_tikz(entry.picture)
            files[f"{entry.layer}/{entry.quantity}.svg"] = to_svg(entry.picture)
    files["README.md"] = _readme(entries)
    return files


def write_gallery(directory: str | Path, layers: tuple[tuple[str, str], ...] = GALLERY_LAYERS) -> list[Path]:
    """Write the gallery under ``directory`` and delete drawings it no longer has; returns the written paths."""
    root = Path(directory)
    files = gallery_files(layers)
    root.mkdir(parents=True, exist_ok=True)
    for old in sorted(root.glob("*/*")):
        if old.suffix in (".tex", ".svg") and old.relative_to(root).as_posix() not in files:
            old.unlink()
    written = []
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return written


def _readme(entries: list[Entry]) -> str:
    lines = [
        "# Diagram gallery",
        "",
        "Generated by `tnderiv render --gallery diagrams/`; do not edit by hand. `tests/render/test_gallery.py`",
        "fails when these files differ from what the code draws now, and compiles every `.tex` with `pdflatex`.",
        "",
        "Each `.tex` is a TikZ snippet with its `\\tikzset` styles: `\\input` it in any pdflatex document that",
        "loads `tikz`. Each `.svg` is the same picture drawn without TeX. How to read the pictures (boxes, the",
        "shaded Π, dots, stubs, mirrored copies) and how to draw your own: [docs/rendering.md](../docs/rendering.md).",
        "",
        "Legs of size 1 are not drawn (the `g` leg of a convolution without groups).",
        "",
        "## Layers",
        "",
    ]
    layers = list(dict.fromkeys((e.layer, e.spec) for e in entries))
    lines += [f"- [{layer}](#{layer}) — `{spec}`" for layer, spec in layers]
    for layer, spec in layers:
        lines += ["", f"## {layer}", "", f'`tnderiv render "{spec}" QUANTITY -o FILE`', ""]
        missing = []
        for entry in (e for e in entries if e.layer == layer):
            if entry.picture is None:
                missing.append(f"- `{entry.quantity}`: {entry.error}")
                continue
            title = (
                "derivation of vjp_weight (rules in order)"
                if entry.quantity.startswith("derivation")
                else entry.quantity
            )
            lines += [
                f"### {layer}: {title}",
                "",
                f"`{entry.expression}`",
                "",
                f"![{layer} {entry.quantity}]({layer}/{entry.quantity}.svg)",
                "",
                f"[TikZ]({layer}/{entry.quantity}.tex)",
                "",
            ]
        if missing:
            lines += [f"### {layer}: not defined", ""] + missing + [""]
    lines += _crossing_section(entries)
    return "\n".join(lines).rstrip() + "\n"


def crossing_table(entries: list[Entry]) -> dict[str, int]:
    """``{"layer/quantity": number of leg crossings}`` for every drawing of the gallery."""
    return {f"{e.layer}/{e.quantity}": crossing_count(e.picture) for e in entries if e.picture is not None}


def _crossing_section(entries: list[Entry]) -> list[str]:
    table = crossing_table(entries)
    lines = [
        "",
        "## Crossings",
        "",
        "Points where two different legs cross (counted on the drawn paths, not where legs meet at a shape).",
        "`tests/render/test_crossings.py` fails when a drawing gets more than `tests/render/crossings.json` allows.",
        "",
        "| drawing | crossings |",
        "| --- | ---: |",
    ]
    return lines + [f"| `{name}` | {count} |" for name, count in table.items()]
