"""Test-wide setup: make ``tests/cases`` importable as ``cases`` and bound hypothesis' work."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

# test tensors are tiny: extra threads only contend on a shared machine (measured: 2.4x less CPU time)
torch.set_num_threads(int(os.environ.get("TNDERIV_TEST_THREADS", "1")))

# deadline=None: the first example of a new shape plans and compiles (tens of ms on a loaded machine)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
# reproducible runs for CI: the same examples every time
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
