"""What every probe needs of a checkpoint: the model, its metadata, and its pre-training held-out tokens.

The held-out set is the checkpoint's own corpus split, tokenized with its own tokenizer (cached), cut into
the same fixed windows for every checkpoint, so losses are comparable across a ladder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from overtrain.checkpoints.folder import CheckpointInfo, load_model
from overtrain.config import build_dataclass
from overtrain.data.config import DataConfig
from overtrain.data.tokens import TokenData, heldout_windows, prepare_token_data
from overtrain.errors import OvertrainError
from overtrain.model.llama import LlamaLM
from overtrain.model.loss import LossResult, mean_token_loss

DEFAULT_EVAL_TOKENS = 65_536


@dataclass
class ProbeTarget:
    model: LlamaLM
    info: CheckpointInfo
    data: TokenData
    eval_inputs: torch.Tensor  # (N, T) held-out windows of the pre-training corpus
    eval_targets: torch.Tensor  # (N, T)
    dtype: str

    @property
    def weights_file(self) -> Path:
        return self.info.folder / "model.safetensors"

    @property
    def tokens_seen(self) -> int:
        return self.info.tokens_seen

    def restore(self) -> None:
        """Put the checkpoint's own weights back (after fine-tuning or noise), bitwise."""
        from overtrain.probes.noise import restore_from_safetensors

        restore_from_safetensors(dict(self.model.named_parameters()), self.weights_file)

    def pretraining_loss(self, model: torch.nn.Module | None = None) -> LossResult:
        """Held-out pre-training loss of ``model`` (default: the checkpoint's model as it is now)."""
        return mean_token_loss(model or self.model, self.eval_inputs, self.eval_targets, batch_size=32, dtype=self.dtype)


def load_probe_target(checkpoint: Path, eval_tokens: int = DEFAULT_EVAL_TOKENS, dtype: str = "auto", log=print) -> ProbeTarget:
    """Load an overtrain checkpoint and its fixed pre-training held-out windows."""
    model, info = load_model(Path(checkpoint))
    data_config = build_dataclass(DataConfig, info.run_config["data"], "data.")
    data = prepare_token_data(data_config, log=log)
    seq_len = int(info.run_config["train"]["seq_len"])
    check_same_tokenizer(info.folder, data.tokenizer_folder)
    inputs, targets = heldout_windows(data, eval_tokens, seq_len)
    model.eval()
    return ProbeTarget(model, info, data, inputs, targets, dtype)


def check_same_tokenizer(checkpoint_folder: Path, data_tokenizer_folder: Path) -> None:
    """The held-out tokens must come from the tokenizer the checkpoint was trained with."""
    import json

    ours = json.loads((Path(checkpoint_folder) / "tokenizer.json").read_text())["model"]["vocab"]
    theirs = json.loads((Path(data_tokenizer_folder) / "tokenizer.json").read_text())["model"]["vocab"]
    if ours != theirs:
        raise OvertrainError(
            f"the tokenizer in {checkpoint_folder} does not match the tokenizer of its corpus cache {data_tokenizer_folder}",
            "delete that cache folder so it is rebuilt, or point data.cache_dir at the run's original cache",
        )
