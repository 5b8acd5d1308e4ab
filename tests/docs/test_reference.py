"""The documentation site: every public name in the API reference, every nav entry a page, and a
``--strict`` build (without running the examples; ``.ci/run`` builds the full site)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import tnderiv

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
DIRECTIVE = re.compile(r"^::: (\S+)\s*$", re.MULTILINE)


def gallery() -> Any:
    from gallery_module import load_gallery

    return load_gallery()


def directives() -> dict[str, Path]:
    """``{dotted path: page}`` of every ``::: path`` in docs/api/*.md."""
    found = {}
    for page in sorted((DOCS / "api").glob("*.md")):
        for path in DIRECTIVE.findall(page.read_text()):
            found[path] = page
    return found


def resolve(path: str) -> Any:
    """The object a dotted path names at run time: the longest importable module, then attributes."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def test_directives_are_found() -> None:
    found = directives()
    assert "tnderiv.kfac" in found and found["tnderiv.kfac"].name == "curvature.md"
    assert len(found) > len(tnderiv.__all__) // 2


@pytest.mark.parametrize("path", sorted(directives()))
def test_every_directive_names_an_object(path: str) -> None:
    assert resolve(path) is not None


def test_every_public_name_is_documented() -> None:
    """Each name of ``tnderiv.__all__`` is the object of a directive. Paths resolve modules first, as
    mkdocstrings does: where a submodule has the name (``tnderiv.plan``, ``tnderiv.simplify``), the
    directive names the defining module (``::: tnderiv.api.plan`` with ``heading: tnderiv.plan``)."""
    objects = [resolve(path) for path in directives()]
    missing = [name for name in tnderiv.__all__ if not any(obj is getattr(tnderiv, name) for obj in objects)]
    assert not missing, (
        f"not in docs/api/*.md: {missing}; add '::: tnderiv.NAME' to the page of its area "
        "(or, where tnderiv.NAME is also a submodule, '::: defining.module.NAME' with 'heading: tnderiv.NAME')"
    )


def test_the_check_fails_on_an_undocumented_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tnderiv, "__all__", [*tnderiv.__all__, "not_documented"])
    monkeypatch.setattr(tnderiv, "not_documented", object(), raising=False)
    with pytest.raises(AssertionError, match="not_documented"):
        test_every_public_name_is_documented()


def nav_pages(nav: Any) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in nav_pages(value)]
    return [p for item in nav for p in nav_pages(item)]


def config() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML reads mkdocs.yml (installed with the docs extra)")
    text = (ROOT / "mkdocs.yml").read_text()
    return yaml.safe_load(text)


def test_every_nav_entry_is_a_page() -> None:
    """mkdocs --strict fails on a nav entry without its file: docs/, or made by the gallery hook."""
    made = {"examples/index.md", *(f"examples/{name}.md" for name in gallery().EXAMPLES)}
    made |= {f"diagrams/{p.relative_to(ROOT / 'diagrams').as_posix()}" for p in (ROOT / "diagrams").rglob("*.md")}
    pages = nav_pages(config()["nav"])
    missing = [p for p in pages if not (DOCS / p).is_file() and p not in made]
    assert not missing, f"nav entries without a page: {missing}"
    assert len(pages) == len(set(pages)), "a page is in the nav twice"


def test_pages_missing_from_the_nav_go_into_more() -> None:
    """The nav hook lists pages that mkdocs.yml's nav forgets (a new guide) in a last section, "More"."""
    spec = importlib.util.spec_from_file_location("tnderiv_docs_nav_more", DOCS / "api" / "nav_more.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    pytest.importorskip("mkdocs", reason='the nav hook builds mkdocs objects (pip install -e ".[docs]")')

    def file(uri: str, in_nav: bool = True) -> SimpleNamespace:
        f = SimpleNamespace(src_uri=uri, inclusion=SimpleNamespace(is_in_nav=lambda: in_nav))
        f.page = SimpleNamespace(file=f, parent=None)
        return f

    listed, new, hidden = file("index.md"), file("new-guide.md"), file("draft.md", in_nav=False)
    nav = SimpleNamespace(pages=[listed.page], items=["home"])
    files = SimpleNamespace(documentation_pages=lambda: [new, hidden, listed])
    assert hook.on_nav(nav, {}, files) is nav
    assert nav.items[0] == "home" and nav.items[-1].title == "More"
    assert nav.items[-1].children == [new.page] and new.page.parent is nav.items[-1]


def test_gallery_links_point_into_the_site() -> None:
    """The hook rewrites links that leave docs/ for diagrams/ (and back) to the site's layout."""
    hook = gallery()
    page = SimpleNamespace(file=SimpleNamespace(src_uri="rendering.md"))
    assert hook.on_page_markdown("[g](../diagrams/README.md)", page, {}, None) == "[g](diagrams/README.md)"
    page = SimpleNamespace(file=SimpleNamespace(src_uri="diagrams/README.md"))
    assert hook.on_page_markdown("[r](../docs/rendering.md#x)", page, {}, None) == "[r](../rendering.md#x)"
    assert hook.on_page_markdown("[a](../README.md)", page, {}, None) == "[a](../README.md)"  # left alone


def test_site_builds_strict(tmp_path: Path) -> None:
    """The whole site with warnings as errors (examples not executed here: tests/docs/test_examples.py runs them)."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip('mkdocs is not installed (pip install -e ".[docs]")')
    env = {**os.environ, "TNDERIV_DOCS_EXAMPLES": "skip", "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [mkdocs, "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reference = (tmp_path / "site" / "api" / "curvature.html").read_text()
    assert 'id="tnderiv.kfac"' in reference and "d_in, d_in" in reference  # signature and shapes rendered
    for path, page in directives().items():  # every directive rendered an entry on its page
        assert f'id="{path}"' in (tmp_path / "site" / "api" / page.with_suffix(".html").name).read_text(), path
    assert (tmp_path / "site" / "examples" / "kfac_reflect_padding.html").is_file()
