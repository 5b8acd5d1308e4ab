"""MkDocs hook: pages in docs/ that mkdocs.yml's nav does not list join the nav in a last section, "More".

Several people add guides to docs/; a page they forget to list stays reachable from the sidebar
instead of being built as an orphan (a nav entry for a missing file still fails ``--strict``).
Pages under ``not_in_nav`` stay out.
"""

from __future__ import annotations

from typing import Any

TITLE = "More"


def unlisted_pages(nav: Any, files: Any) -> list[Any]:
    """Documentation pages that have a page object but no place in ``nav``, in path order."""
    listed = {id(page) for page in nav.pages}
    return [
        f.page
        for f in sorted(files.documentation_pages(), key=lambda f: f.src_uri)
        if f.page is not None and id(f.page) not in listed and f.inclusion.is_in_nav()
    ]


def on_nav(nav, config, files):  # noqa: ANN001, ANN201  (MkDocs hook signature)
    from mkdocs.structure.nav import Section

    pages = unlisted_pages(nav, files)
    if pages:
        section = Section(TITLE, pages)
        for page in pages:
            page.parent = section
        nav.items.append(section)
    return nav
