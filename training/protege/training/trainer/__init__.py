"""LoRA specialists (S5): dataset rows to token ids with answer-only labels, and the trainer."""

from protege.training.trainer.data import IGNORE, Tokenized, tokenize_row, tokenize_rows
from protege.training.trainer.lora import TrainingError, TrainResult, train_lora

__all__ = [
    "IGNORE",
    "Tokenized",
    "TrainResult",
    "TrainingError",
    "tokenize_row",
    "tokenize_rows",
    "train_lora",
]
