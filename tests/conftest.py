"""Test-wide setup: bound torch's threads and hypothesis' work (``cases`` imports through pyproject's ``pythonpath``)."""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

# test tensors are tiny: extra threads only contend on a shared machine (measured: 2.4x less CPU time)
torch.set_num_threads(int(os.environ.get("TNDERIV_TEST_THREADS", "1")))

# deadline=None: the first example of a new shape plans and compiles (tens of ms on a loaded machine)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
# reproducible runs for CI: the same examples every time
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
