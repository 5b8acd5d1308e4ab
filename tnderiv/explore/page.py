"""The explorer page: one self-contained HTML document (CSS, JS and the first report inlined; no network)."""

from __future__ import annotations

import html
import json
import re
import secrets
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

Mode = Literal["server", "static"]


def _asset(name: str) -> str:
    return resources.files("tnderiv.explore").joinpath("assets", name).read_text(encoding="utf-8")


def state_json(report: dict[str, Any]) -> str:
    """``report`` as JSON that is safe inside a ``<script type="application/json">`` element."""
    text = json.dumps(report, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def page_policy(nonce: str, mode: Mode) -> str:
    """The Content-Security-Policy of a page whose one script carries ``nonce``."""
    connect = "connect-src 'self'" if mode == "server" else "connect-src 'none'"
    return f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src data:; {connect}"


def render_page(report: dict[str, Any], mode: Mode = "static") -> tuple[str, str]:
    """The whole page for ``report`` and its Content-Security-Policy; ``mode="static"``: no re-planning, no measuring."""
    if mode not in get_args(Mode):
        raise ValueError(f"mode={mode!r}: expected one of {list(get_args(Mode))}")
    nonce = secrets.token_urlsafe(16)  # only the page's own script runs, even if a name ever slipped through as markup
    csp = page_policy(nonce, mode)
    page = _asset("page.html")
    replacements = {
        "{{CSP}}": html.escape(csp),
        "{{TITLE}}": html.escape(f"tnderiv explore · {report.get('target', '')}"),
        "{{MODE}}": mode,
        "{{CSS}}": _asset("page.css"),
        "{{STATE}}": state_json(report),
        "{{JS}}": _asset("page.js"),
        "{{NONCE}}": nonce,
    }
    # one pass over the template: text put in (names in the state) is never scanned for placeholders again
    return re.sub(r"\{\{[A-Z]+\}\}", lambda m: replacements[m.group(0)], page), csp


def page_html(report: dict[str, Any], mode: Mode = "static") -> str:
    """The whole page for ``report`` (CSS, JS, state inlined); ``mode="static"`` disables re-planning and measuring."""
    return render_page(report, mode)[0]


def write_static(report: dict[str, Any], path: str | Path) -> Path:
    """Write the static page for ``report`` to ``path`` (works from ``file://`` with the network off)."""
    target = Path(path)
    if target.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"path={str(path)!r}: expected a .html file")
    target.write_text(page_html(report, mode="static"), encoding="utf-8")
    return target
