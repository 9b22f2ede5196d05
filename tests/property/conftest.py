"""Hypothesis profiles for the property tests: ``ci`` (the default: derandomised, a fixed
set of examples, so CI is reproducible and quick) and ``long`` (many random examples, for
a hunt: ``HYPOTHESIS_PROFILE=long make test`` or ``pytest tests/property``)."""

import os

from hypothesis import HealthCheck, settings

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
               print_blob=True)
settings.register_profile("ci", max_examples=12, derandomize=True, database=None, **_common)
settings.register_profile("long", max_examples=400, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
