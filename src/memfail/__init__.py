"""memfail."""
