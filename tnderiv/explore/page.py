"""The explorer page: one self-contained HTML document (CSS, JS and the first report inlined; no network)."""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

Mode = Literal["server", "static"]


def _asset(name: str) -> str:
    return resources.files("tnderiv.explore").joinpath("assets", name).read_text(encoding="utf-8")


def state_json(report: dict[str, Any]) -> str:
    """``report`` as JSON that is safe inside a ``<script type="application/json">`` element."""
    text = json.dumps(report, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def page_html(report: dict[str, Any], mode: Mode = "static") -> str:
    """The whole page for ``report``; ``mode="static"`` disables re-planning and measuring (no server)."""
    if mode not in ("server", "static"):
        raise ValueError(f"mode={mode!r}: expected 'server' or 'static'")
    csp = (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
        + ("connect-src 'self'" if mode == "server" else "connect-src 'none'")
    )
    page = _asset("page.html")
    replacements = {
        "{{CSP}}": html.escape(csp),
        "{{TITLE}}": html.escape(f"tnderiv explore · {report.get('target', '')}"),
        "{{MODE}}": mode,
        "{{CSS}}": _asset("page.css"),
        "{{STATE}}": state_json(report),
        "{{JS}}": _asset("page.js"),
    }
    # one pass over the template: text put in (names in the state) is never scanned for placeholders again
    return re.sub(r"\{\{[A-Z]+\}\}", lambda m: replacements[m.group(0)], page)


def write_static(report: dict[str, Any], path: str | Path) -> Path:
    """Write the static page for ``report`` to ``path`` (works from ``file://`` with the network off)."""
    target = Path(path)
    if target.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"path={str(path)!r}: expected a .html file")
    target.write_text(page_html(report, mode="static"), encoding="utf-8")
    return target
