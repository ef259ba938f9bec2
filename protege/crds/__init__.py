"""CustomResourceDefinitions: generated from protege.api, checked for drift and structure."""

from protege.crds.generate import crd_files, drifted, render_crd, write_crds
from protege.crds.schema import structural_errors, to_structural
from protege.crds.validate import CrdCatalogue, openapi_to_jsonschema

__all__ = [
    "CrdCatalogue",
    "crd_files",
    "drifted",
    "openapi_to_jsonschema",
    "render_crd",
    "structural_errors",
    "to_structural",
    "write_crds",
]
