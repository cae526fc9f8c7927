"""The SPIN engine of `memfail check` (docs/check.md, "The SPIN engine")."""
