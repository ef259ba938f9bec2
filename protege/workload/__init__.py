"""The shipped multi-task agent workload: generated calls, teacher recordings, the SQL database."""

from protege.workload.agent import FAMILIES, STYLES, WorkloadCall, generate
from protege.workload.schema import SCHEMA_SQL, build_database

__all__ = ["FAMILIES", "SCHEMA_SQL", "STYLES", "WorkloadCall", "build_database", "generate"]
