"""``memfail conform``: scenarios as C programs run on a real kernel under QEMU, compared with
the model; ``memfail selftest``: scenarios as kernel selftests. See docs/conform.md."""

from .cgen import Program, generate
from .compare import CaseResult, Difference, compare_case, load_known

__all__ = ["CaseResult", "Difference", "Program", "compare_case", "generate", "load_known"]
