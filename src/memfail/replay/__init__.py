"""memfail replay: real RAS logs in (kernel logs, mcelog, rasdaemon, tracepoints, QEMU), one
event format out, replay on the model, and a projection onto a guest_memfd host per policy.
"""

from .events import SCHEMA, MceRecord, Problem, RasEvent, ReadResult, SourceSummary
from .read import FORMATS, ReplayInputError, read_inputs
from .replay import Incident, ReplayOutcome, incidents, replay_all

__all__ = [
    "FORMATS",
    "SCHEMA",
    "Incident",
    "MceRecord",
    "Problem",
    "RasEvent",
    "ReadResult",
    "ReplayInputError",
    "ReplayOutcome",
    "SourceSummary",
    "incidents",
    "read_inputs",
    "replay_all",
]
