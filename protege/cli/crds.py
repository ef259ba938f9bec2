from __future__ import annotations

from pathlib import Path

import typer

from protege.cli.common import console, fail
from protege.crds.generate import drifted, write_crds


def crds(
    output: Path = typer.Option(Path("crds"), "--output", "-o", help="Directory to write the CRDs to."),
    check: bool = typer.Option(False, "--check", help="Only check that the directory is up to date."),
) -> None:
    """Generate the CustomResourceDefinitions from the API models."""
    if check:
        stale = drifted(output)
        if stale:
            fail(f"{output} is out of date ({', '.join(stale)}); run `protege crds -o {output}`")
        console.print(f"{output}: up to date")
        return
    for path in write_crds(output):
        console.print(f"wrote {path}")
