"""The example gallery: run every example, collect what it printed and saved, and make one page of each.

An MkDocs hook (``hooks:`` in mkdocs.yml). At build time each example in ``EXAMPLES`` runs in its own
Python process, in an empty folder, with matplotlib's Agg backend; a failing example, or one that does
not write the files it promises, fails the build. Each becomes a page ``examples/<name>.md``: its
docstring, its source, what it printed, and its figures, which are copied into the site; the
gallery's index ``examples/index.md`` shows them side by side. The hook also publishes the
repository's ``diagrams/`` gallery under ``diagrams/`` and points links that leave ``docs/`` for it
(``../diagrams/…`` in a page, ``../docs/…`` in ``diagrams/README.md``) at the site's copy.

``TNDERIV_DOCS_EXAMPLES=skip`` builds the pages without running the examples (a note says so): the
fast build of ``tests/docs``. As a script, ``python examples/gallery.py OUT`` runs them into ``OUT``.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# name -> files the example must write (the figure first: it is the gallery's thumbnail)
EXAMPLES: dict[str, tuple[str, ...]] = {
    "kfac_reflect_padding": ("kfac_factors.png",),
    "kfac_optimizer": ("kfac_vs_sgd.png",),
    "gradient_statistics": ("gradient_statistics.png",),
    "paper_figure": ("derivation.svg", "derivation.tex", "derivation_standalone.tex"),
    "plan_candidates": ("candidates.png",),
}
TIMEOUT_S = 300
IMAGES = (".png", ".svg", ".jpg")
log = logging.getLogger("mkdocs.hooks.gallery")


@dataclass
class Run:
    """One example's outcome: what it printed and the files it wrote (name -> bytes)."""

    name: str
    stdout: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    seconds: float = 0.0
    executed: bool = True


def title_and_text(path: Path) -> tuple[str, str, str]:
    """``(title, description, source without its docstring)`` of an example file."""
    source = path.read_text()
    module = ast.parse(source)
    doc = ast.get_docstring(module)
    if not doc:
        raise ValueError(f"{path} has no module docstring; expected a title line and a description")
    title, _, text = doc.partition("\n")
    body = source.splitlines()[module.body[0].end_lineno :]
    return title.strip().rstrip("."), text.strip(), "\n".join(body).strip() + "\n"


def run_example(name: str, out_dir: Path) -> Run:
    """Run ``examples/<name>.py`` in ``out_dir``; raise with its output if it fails or misses a file."""
    script = HERE / f"{name}.py"
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=out_dir, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"example {name} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    missing = [f for f in EXAMPLES[name] if not (out_dir / f).is_file()]
    if missing:
        raise RuntimeError(f"example {name} did not write {missing}; it wrote {sorted(p.name for p in out_dir.iterdir())}")
    files = {p.name: p.read_bytes() for p in sorted(out_dir.iterdir()) if p.is_file()}
    return Run(name, proc.stdout, files, seconds)


def page(run: Run) -> str:
    """The Markdown page of one example."""
    title, text, body = title_and_text(HERE / f"{run.name}.py")
    lines = [f"# {title}", "", text, "", f"Source: [`examples/{run.name}.py`]({run.name}.py) · run it with "
             f"`.venv/bin/python examples/{run.name}.py` (it writes its files into the current folder).", ""]
    if not run.executed:
        lines += ['!!! note "Not executed in this build"', "    `TNDERIV_DOCS_EXAMPLES=skip`: the output is left out.", ""]
    for name in run.files:
        if name.endswith(IMAGES):
            lines += [f"[![{name}]({run.name}/{name})]({run.name}/{name})", ""]
    others = [n for n in run.files if not n.endswith(IMAGES)]
    if others:
        lines += ["Files: " + " · ".join(f"[`{n}`]({run.name}/{n})" for n in others), ""]
    if run.stdout.strip():
        lines += ["## Output", "", "```text", run.stdout.rstrip(), "```", ""]
    if run.executed:
        lines += [f"*Executed when this site was built, in {run.seconds:.1f} s.*", ""]
    lines += ["## Source", "", "```python", body.rstrip(), "```", ""]
    return "\n".join(lines)


def index(runs: list[Run]) -> str:
    """The gallery's front page: a card per example with its figure."""
    lines = [
        "# Examples",
        "",
        "Short, runnable scripts, each producing what you would want to see: a figure, a table, a plot.",
        "They run at small sizes in a few seconds each; every one checks its numbers against an",
        "independent oracle (`torch.autograd`, a dense solve, a plain-torch unfold). The site runs them",
        "when it is built (`examples/gallery.py`) and the test suite runs them too (`tests/docs`), so",
        "they cannot rot.",
        "",
        "To add one: a script in `examples/` whose docstring is a title line and a description, that",
        "prints what it shows and writes its figures into the current folder; list it with those files",
        "in `EXAMPLES` in `examples/gallery.py` and under Examples in `mkdocs.yml`.",
        "",
    ]
    for run in runs:
        title, text, _ = title_and_text(HERE / f"{run.name}.py")
        first = text.split("\n\n")[0].replace("\n", " ")
        lines += [f"## [{title}]({run.name}.md)", "", first, ""]
        thumb = EXAMPLES[run.name][0]
        if run.executed and thumb.endswith(IMAGES):
            lines += [f'[![{title}]({run.name}/{thumb}){{ width="560" }}]({run.name}.md)', ""]
    return "\n".join(lines)


def run_all(out_root: Path, execute: bool = True) -> list[Run]:
    runs = []
    for name in EXAMPLES:
        if not execute:
            runs.append(Run(name, executed=False))
            continue
        out_dir = out_root / name
        out_dir.mkdir(parents=True, exist_ok=True)
        run = run_example(name, out_dir)
        log.info("gallery: %s ran in %.1f s", name, run.seconds)
        runs.append(run)
    return runs


# ---- MkDocs hook -------------------------------------------------------------------------------------

def on_files(files, config):  # noqa: ANN001, ANN201  (MkDocs hook signature)
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import File

    execute = os.environ.get("TNDERIV_DOCS_EXAMPLES", "") != "skip"
    with tempfile.TemporaryDirectory(prefix="tnderiv-gallery-") as tmp:
        try:
            runs = run_all(Path(tmp), execute)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            raise PluginError(str(err)) from err
    files.append(File.generated(config, "examples/index.md", content=index(runs)))
    for run in runs:
        files.append(File.generated(config, f"examples/{run.name}.md", content=page(run)))
        files.append(File.generated(config, f"examples/{run.name}.py", abs_src_path=str(HERE / f"{run.name}.py")))
        for name, data in run.files.items():
            files.append(File.generated(config, f"examples/{run.name}/{name}", content=data))
    for path in sorted((ROOT / "diagrams").rglob("*")):
        if path.is_file():
            files.append(File.generated(config, f"diagrams/{path.relative_to(ROOT / 'diagrams').as_posix()}", abs_src_path=str(path)))
    return files


LINK = re.compile(r"\]\((\.\./(?:diagrams|docs)/[^)\s]*)\)")


def on_page_markdown(markdown, page, config, files):  # noqa: ANN001, ANN201
    """Links from ``docs/`` to ``../diagrams/…`` and from ``diagrams/`` to ``../docs/…``, as the site lays them out."""
    here = Path("docs") / page.file.src_uri if not page.file.src_uri.startswith("diagrams/") else Path(page.file.src_uri)

    def fix(match: re.Match) -> str:
        target = Path(os.path.normpath(here.parent / match.group(1)))  # a path in the repository
        site = target.relative_to("docs") if target.parts[0] == "docs" else target
        page_dir = Path(page.file.src_uri).parent
        return f"]({Path(os.path.relpath(site, page_dir)).as_posix()})"

    return LINK.sub(fix, markdown)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/gallery.py OUT_DIR")
    for run in run_all(Path(sys.argv[1])):
        print(f"{run.name}: {run.seconds:.1f} s, wrote {sorted(run.files)}")
