"""`memfail check`: exhaustive bounded exploration of the model with runnable counterexamples.

The engine (``explorer``) works on any ``System``; ``model_system`` adapts the memfail Host.
"""

from memfail.check.backends import Backend, make_backend
from memfail.check.explorer import (
    FAIL,
    PARTIAL,
    PASS,
    Bounds,
    Options,
    Result,
    Verdict,
    explore,
)
from memfail.check.system import Property, System, canonical_bytes, fingerprint_bytes

__all__ = [
    "FAIL",
    "PARTIAL",
    "PASS",
    "Backend",
    "Bounds",
    "Options",
    "Property",
    "Result",
    "System",
    "Verdict",
    "canonical_bytes",
    "explore",
    "fingerprint_bytes",
    "make_backend",
]
