"""The interactive contraction-path explorer: a derived diagram, its candidate orders, their steps and costs.

``tnderiv.explore(layer, quantity, shapes)`` serves the page on ``127.0.0.1`` and returns an
``Explorer`` (``.url``, ``.stop()``, shown inline in Jupyter); ``tnderiv explore SPEC QUANTITY`` does
the same from the command line, ``--static FILE.html`` writes a self-contained page instead.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tnderiv.explore.page import page_html, write_static
from tnderiv.explore.server import ExplorerServer, Session, check_host

if TYPE_CHECKING:
    from tnderiv.explore.settings import Settings, Target

# the model (and with it the render module) is imported on the first call: `import tnderiv` stays fast


def initial_settings(target: Target, quantity: str | None, shapes: Mapping[str, Sequence[int]] | None) -> Settings:
    """The first settings: the quantity (default ``vjp_weight`` for a layer) and sizes bound from ``shapes``."""
    from tnderiv.explore.settings import Settings, resolve, sizes_from_shapes

    if quantity is not None and not isinstance(quantity, str):
        raise TypeError(f"quantity={quantity!r}: expected a quantity name such as 'vjp_weight'")
    if target.layer is None and quantity is not None:
        raise ValueError(f"quantity={quantity!r}: a diagram is its own quantity; expected quantity=None")
    settings = Settings(quantity=quantity if target.layer is not None else None)
    if not shapes:
        return settings
    if not isinstance(shapes, Mapping):
        raise TypeError(f"shapes={shapes!r}: expected a mapping {{operand name: shape}}")
    resolved = resolve(target, settings)
    check = None
    if resolved.layer is not None:
        from tnderiv.layers.base import spec_of

        check = spec_of(resolved.layer).network(dict(resolved.rank_shapes)).check_sizes
    sizes = sizes_from_shapes(resolved.expr, shapes, check)
    return Settings(settings.spec, settings.quantity, tuple(sorted(sizes.items())), settings.simplify, settings.term)


class Explorer:
    """An explorer page for one layer or diagram: ``url``/``stop()`` while served, ``_repr_html_`` for Jupyter."""

    def __init__(self, session: Session, server: ExplorerServer | None = None) -> None:
        self.session, self.server = session, server

    @property
    def url(self) -> str | None:
        """The page's address while the server runs (``None`` for a static explorer)."""
        return self.server.url if self.server is not None else None

    def stop(self) -> None:
        """Stop serving (the page stays usable as a static page)."""
        if self.server is not None:
            self.server.stop()
            self.server = None

    def report(self) -> dict[str, Any]:
        """The report of the first settings (what the page shows first), as JSON-ready data."""
        return self.session.report(self.session.settings)

    def to_html(self) -> str:
        """The self-contained static page."""
        return page_html(self.report(), mode="static")

    def save(self, path: str | Path) -> Path:
        """Write the static page to ``path`` (``.html``)."""
        return write_static(self.report(), path)

    def _repr_html_(self) -> str:
        page = html.escape(self.to_html(), quote=True)
        link = f"<p>live page: <a href='{html.escape(self.url)}' target='_blank'>{html.escape(self.url)}</a></p>" if self.url else ""
        # sandboxed: the page runs in its own origin and cannot reach the notebook around it
        return (f"{link}<iframe sandbox='allow-scripts allow-downloads' srcdoc=\"{page}\" "
                "style='width:100%;height:900px;border:1px solid #d8dee4;border-radius:8px'></iframe>")

    def __repr__(self) -> str:
        where = f"serving at {self.url}" if self.url else "static"
        return f"<tnderiv Explorer {self.session.target.label!r} ({where})>"


def explore(
    layer_or_diagram: Any,
    quantity: str | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    serve: bool = True,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Explorer:
    """Explore the contraction orders of ``quantity`` of a layer (a spec, a torch module or a spec string) or of a diagram.

    ``shapes`` (operand name → shape) sets the sizes; ``serve=True`` starts the local server (loopback
    only) in a background thread: open ``explorer.url``, call ``explorer.stop()`` when done.
    """
    from tnderiv.explore.settings import make_target

    if serve:
        host = check_host(host)  # before any work: a non-loopback address is refused at once
    target = make_target(layer_or_diagram)
    settings = initial_settings(target, quantity, shapes)
    session = Session(target, settings)
    session.report(settings)  # an invalid setting raises here, before any server starts
    server = ExplorerServer(session, host, port).start() if serve else None
    return Explorer(session, server)


__all__ = ["Explorer", "ExplorerServer", "Session", "check_host", "explore", "initial_settings"]
