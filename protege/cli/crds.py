from __future__ import annotations

from pathlib import Path

import typer

from protege.cli.common import console, fail
from protege.crds.generate import drifted, write_crds
from protege.crds.reference import reference_markdown


def crds(
    output: Path = typer.Option(Path("crds"), "--output", "-o", help="Directory to write the CRDs to."),
    check: bool = typer.Option(False, "--check", help="Only check that the directory is up to date."),
    reference: Path | None = typer.Option(
        None,
        help="Also write (or with --check, check) the Markdown field reference, e.g. docs/crd-reference.md.",
    ),
) -> None:
    """Generate the CustomResourceDefinitions (and their reference) from the API models."""
    text = reference_markdown() if reference else None
    if check:
        stale = drifted(output)
        if reference and (not reference.exists() or reference.read_text() != text):
            stale.append(str(reference))
        if stale:
            again = f"protege crds -o {output}" + (f" --reference {reference}" if reference else "")
            fail(f"out of date: {', '.join(stale)}; run `{again}`")
        console.print(f"{output}: up to date" + (f"; {reference}: up to date" if reference else ""))
        return
    for path in write_crds(output):
        console.print(f"wrote {path}")
    if reference and text:
        reference.write_text(text)
        console.print(f"wrote {reference}")
