"""``examples/gallery.py`` (the gallery hook), loaded once as a module for the docs tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
NAME = "tnderiv_docs_gallery"


def load_gallery() -> ModuleType:
    if NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(NAME, ROOT / "examples" / "gallery.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[NAME] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[NAME]
