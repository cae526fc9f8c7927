"""memfail fleet: what each memory-failure policy costs a fleet, from field DRAM data.

Samples failure classes from cited field statistics and composes per-class outcomes.
"""

from memfail.fleet.classes import FailureClass, Outcome
from memfail.fleet.engine import FleetResult, Rate, run, sample, sweep
from memfail.fleet.oracle import (
    ImpossibleClass,
    ModelOracle,
    ModelScenario,
    OracleUnavailable,
    OutcomeOracle,
    TableOracle,
)
from memfail.fleet.params import FleetError, FleetInputError, FleetParams, LoadedFleet, load_fleet
from memfail.fleet.stats import Interval

__all__ = [
    "FailureClass",
    "FleetError",
    "FleetInputError",
    "FleetParams",
    "FleetResult",
    "ImpossibleClass",
    "Interval",
    "LoadedFleet",
    "ModelOracle",
    "ModelScenario",
    "OracleUnavailable",
    "Outcome",
    "OutcomeOracle",
    "Rate",
    "TableOracle",
    "load_fleet",
    "run",
    "sample",
    "sweep",
]
