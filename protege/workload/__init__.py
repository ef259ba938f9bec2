"""The shipped multi-task agent workload: generated calls, teacher recordings, the SQL database."""

from protege.workload.agent import (
    CABINS,
    DRIFTED,
    FAMILIES,
    STYLES,
    WorkloadCall,
    generate,
    recorded_workload,
)
from protege.workload.schema import SCHEMA_SQL, build_database

__all__ = [
    "CABINS",
    "DRIFTED",
    "FAMILIES",
    "SCHEMA_SQL",
    "STYLES",
    "WorkloadCall",
    "build_database",
    "generate",
    "recorded_workload",
]
