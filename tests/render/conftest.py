"""The gallery, derived and laid out once per session (several test files check it)."""

from __future__ import annotations

import pytest

from tnderiv.render.gallery import Entry, gallery_entries


@pytest.fixture(scope="session")
def entries() -> list[Entry]:
    return gallery_entries()
