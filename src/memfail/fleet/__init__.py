"""memfail fleet: what each memory-failure policy costs a fleet, from field DRAM data.

Samples failure classes from cited field statistics and composes per-class outcomes.
"""
