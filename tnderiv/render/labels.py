"""Labels of drawn things: parsed once into a rich form, written as TeX or as SVG text runs.

Leg names follow the paper conventions: ``c_in`` → c with subscript "in", ``o0`` → o with subscript
0, trailing primes stay primes. Operand names of one letter are italic, words are upright.
Widths are estimated (in cm) so that the layout can reserve room without running TeX.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PT_TO_CM = 2.54 / 72.27

# TeX macros for the non-ASCII characters names may use (math mode)
GREEK = {
    "α": r"\alpha", "β": r"\beta", "γ": r"\gamma", "δ": r"\delta", "ε": r"\varepsilon", "ζ": r"\zeta",
    "η": r"\eta", "θ": r"\theta", "κ": r"\kappa", "λ": r"\lambda", "μ": r"\mu", "ν": r"\nu", "ξ": r"\xi",
    "π": r"\pi", "ρ": r"\rho", "σ": r"\sigma", "τ": r"\tau", "φ": r"\varphi", "χ": r"\chi", "ψ": r"\psi",
    "ω": r"\omega", "Γ": r"\Gamma", "Δ": r"\Delta", "Θ": r"\Theta", "Λ": r"\Lambda", "Ξ": r"\Xi",
    "Π": r"\Pi", "Σ": r"\Sigma", "Φ": r"\Phi", "Ψ": r"\Psi", "Ω": r"\Omega",
    "·": r"\cdot", "−": "-", "×": r"\times", "′": "'", "𝟙": r"\mathbf{1}",
}  # fmt: skip
# characters that are special in TeX text, with their escapes
TEX_SPECIAL = {
    "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#", "%": r"\%",
    "_": r"\_", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}", "<": r"\textless{}",
    ">": r"\textgreater{}", "|": r"\textbar{}",
}  # fmt: skip
COMBINING_HAT = "\u0302"
COMBINING_BAR = "\u0304"
ACCENTS = {COMBINING_HAT: r"\hat", COMBINING_BAR: r"\bar", "\u0303": r"\tilde"}

_LEG = re.compile(r"^(?P<main>[A-Za-z]|[^\W\d_])(?:_?(?P<sub>[A-Za-z0-9]+))?(?P<primes>'*)$")
_WORD_SUB = re.compile(r"^(?P<main>[A-Za-z]+)_(?P<sub>[A-Za-z0-9]+)(?P<primes>'*)$")
_LETTER_DIGITS = re.compile(r"^(?P<main>[A-Za-z]+)(?P<sub>\d+)(?P<primes>'*)$")


@dataclass(frozen=True)
class Label:
    """A name as drawn: ``main`` with optional subscript, hat and primes.

    ``italic`` says whether ``main`` is one math letter (italic) or a word (upright).
    """

    main: str
    sub: str = ""
    primes: int = 0
    italic: bool = True
    hat: bool = False
    joined: tuple[Label, ...] = ()  # a merged leg: its parts, drawn with · between them

    @property
    def plain(self) -> str:
        """The label as plain Unicode text (for tooltips and tests)."""
        if self.joined:
            return "·".join(part.plain for part in self.joined)
        hat = COMBINING_HAT if self.hat else ""
        sub = f"_{self.sub}" if self.sub else ""
        return f"{self.main}{hat}{sub}{'′' * self.primes}"

    def tex(self) -> str:
        """The label in TeX math mode, without the surrounding ``$``."""
        if self.joined:
            return r"{\cdot}".join(part.tex() for part in self.joined)
        main = tex_math_text(self.main, upright=not self.italic)
        if self.hat:
            main = rf"\hat{{{main}}}"
        out = main
        if self.sub:
            sub_upright = len(self.sub) > 1 and not self.sub.isdigit()
            out += f"_{{{tex_math_text(self.sub, upright=sub_upright)}}}"
        return out + "'" * self.primes

    def svg_runs(self) -> list[tuple[str, str]]:
        """Text runs ``(text, role)``, role ∈ ``italic``, ``upright``, ``sub`` (subscript)."""
        if self.joined:
            runs: list[tuple[str, str]] = []
            for index, part in enumerate(self.joined):
                runs.extend(([("·", "upright")] if index else []) + part.svg_runs())
            return runs
        main = self.main + (COMBINING_HAT if self.hat else "")
        runs = [(main, "italic" if self.italic and _is_letter(self.main) else "upright")]
        if self.sub:
            runs.append((self.sub, "sub"))
        if self.primes:
            runs.append(("′" * self.primes, "upright"))
        return runs

    def width(self, size_pt: float) -> float:
        """Estimated width in cm at font size ``size_pt``."""
        if self.joined:
            return sum(p.width(size_pt) for p in self.joined) + 0.3 * size_pt * PT_TO_CM * (len(self.joined) - 1)
        em = size_pt * PT_TO_CM
        w = sum(char_em(c) for c in self.main) * em
        w += sum(char_em(c) for c in self.sub) * em * 0.72
        w += 0.3 * em * self.primes
        return w + 0.08 * em

    def height(self, size_pt: float) -> float:
        """Estimated height in cm (with a subscript's descent)."""
        if self.joined:
            return max(p.height(size_pt) for p in self.joined)
        return size_pt * PT_TO_CM * (1.0 if self.sub else 0.8) + (0.08 if self.hat else 0.0)


def _is_letter(text: str) -> bool:
    return len(text) == 1 and text.isalpha()


def char_em(c: str) -> float:
    """Estimated width of the character ``c`` in em."""
    if c in "il.,:;'|!":
        return 0.3
    if c in "mwMW":
        return 0.85
    if c.isupper() or c in GREEK and c.isupper():
        return 0.72
    if c == "_":
        return 0.55
    return 0.52


def tex_math_text(text: str, *, upright: bool) -> str:
    """``text`` for TeX math mode: specials escaped, Greek as macros; words wrapped in ``\\mathrm``."""
    parts = []
    for index, c in enumerate(text):
        if c in ACCENTS:
            continue
        accent = ACCENTS.get(text[index + 1]) if index + 1 < len(text) else None
        if c.isascii() and (c.isalnum() or c in "'+-=()[],.;:/*!?@ "):
            piece = r"\ " if c == " " else c
        elif c in TEX_SPECIAL:
            piece = rf"\mbox{{{TEX_SPECIAL[c]}}}"
        elif c in GREEK:
            piece = f"{{{GREEK[c]}}}"
        else:
            raise ValueError(
                f"cannot write {c!r} (U+{ord(c):04X}) of label {text!r} for pdflatex; use ASCII, Greek letters or "
                f"one of {''.join(sorted(set(GREEK) - set('ΓΔΘΛΞΠΣΦΨΩ')))}"
            )
        parts.append(rf"{accent}{{{piece}}}" if accent else piece)
    body = "".join(parts)
    if upright and any(c.isascii() and c.isalpha() for c in text):
        return rf"\mathrm{{{body}}}"
    return body


def tex_escape_text(text: str) -> str:
    """``text`` for TeX text mode (rule names, captions)."""
    out = []
    for c in text:
        if c in TEX_SPECIAL:
            out.append(TEX_SPECIAL[c])
        elif c.isascii():
            out.append(c)
        elif c in GREEK:
            out.append(r"$\times$" if c == "×" else rf"${GREEK[c]}$")
        elif c == "→":
            out.append(r"$\to$")
        else:
            raise ValueError(f"cannot write {c!r} (U+{ord(c):04X}) of {text!r} for pdflatex")
    return "".join(out)


def leg_label(name: str) -> Label:
    """The label of leg ``name``: ``c_in`` → c_in as c with subscript, ``o0'`` → o with subscript 0 and a prime."""
    name = name.replace("′", "'")
    if "·" in name.strip("·"):
        return Label(name, joined=tuple(leg_label(part) for part in name.split("·")))
    for pattern in (_LETTER_DIGITS, _WORD_SUB, _LEG):
        match = pattern.match(name)
        if match:
            main = match["main"]
            return Label(main, match["sub"] or "", len(match["primes"]), italic=len(main) == 1)
    stripped = name.rstrip("'")
    return Label(stripped, "", len(name) - len(stripped), italic=_is_letter(stripped))


def operand_label(name: str) -> Label:
    """The label of operand ``name``: ``x`` italic, ``x_hat`` as x with a hat, words upright (``grad_out``)."""
    if name.endswith("_hat") and len(name) > 4:
        inner = operand_label(name[:-4])
        return Label(inner.main, inner.sub, inner.primes, inner.italic, hat=True)
    stripped = name.rstrip("'")
    primes = len(name) - len(stripped)
    match = _LETTER_DIGITS.match(stripped) if len(stripped) <= 3 else None
    if match and len(match["main"]) == 1:
        return Label(match["main"], match["sub"], primes, italic=True)
    return Label(stripped, "", primes, italic=_is_letter(stripped))
