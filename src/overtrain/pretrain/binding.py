"""A run folder is bound to the settings that define its result; a re-run with other settings is refused.

The first ``train_run`` into an ``out_dir`` writes ``run.json`` with the run's *result settings*: every
setting that changes the numbers the run produces (the model, the data, the optimization, the budget
and its schedule, the seed, the precision, the held-out set). A later invocation with different result
settings is refused with the differences (old -> new) and the fix, instead of silently continuing a run
that was trained under other settings (a doubled ``max_tokens`` would re-warm a run that had already
annealed to zero; a halved one would report the old, larger run's result).

``train.extend=true`` continues the run anyway from its newest checkpoint under the new train settings,
says so, and records the change (tokens, step, differences) in ``run.json``. The model, the data and
the seed, batch size and sequence length cannot change within a run, extended or not.

Result-neutral settings (:data:`EXECUTION_KEYS`) may change between invocations: they decide how and
where a run executes or what it logs, not the weights it reaches. The loop still refuses a checkpoint
milestone the run has trained past without keeping (``pretrain.loop``): a run's config must not claim a
checkpoint it does not have.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overtrain.atomic import atomic_write_json
from overtrain.errors import OvertrainError
from overtrain.units import format_tokens

RUN_FILE = "run.json"

EXECUTION_KEYS = (
    "out_dir",  # the folder itself
    "device",  # where the run executes
    "ladder",  # a rung's own settings are in its train section; the ladder only lists the rungs
    "model.preset",  # a name; the fields it expands to are compared
    "data.cache_dir",  # where the token files are kept, not what they hold
    "data.tokenize",  # workers, engine and shard size of the tokenization: the token stream is the same
    "train.threads",  # CPU threads
    "train.compile",  # torch.compile: the same model, faster steps
    "train.cpu_products",  # which library makes the products: the same math (a switch is logged; pretrain.loop)
    "train.eval_every_tokens",  # how often the held-out loss is logged, not what the weights are
    "train.checkpoint_every_tokens",  # which milestones are kept on disk
    "train.checkpoint_at_tokens",  # (a WSD trunk gains branch points when a ladder gains budgets)
)
"""Settings that do not change a run's result, so they may differ between invocations of one run."""

FIXED_WITHIN_A_RUN = ("model.", "data.", "train.seed", "train.batch_size", "train.seq_len")
"""Result settings that even ``train.extend=true`` cannot change (the weights or batches would not fit)."""


def refuse_checkpoint_of_another_run(checkpoint: Path, checkpoint_config: dict[str, Any], run_config: dict[str, Any]) -> None:
    """Refuse to resume from ``checkpoint`` when its own run config differs from this run's in a setting that
    is fixed within a run (:data:`FIXED_WITHIN_A_RUN`): a checkpoint copied in from another run (another
    seed, say) would otherwise be continued silently, its weights then reported as this run's. Keys that
    only one side has (settings added in a later version) are not compared."""
    ours, theirs = fixed_settings(run_config), fixed_settings(checkpoint_config)
    differences = settings_differences({key: theirs[key] for key in ours if key in theirs}, {key: ours[key] for key in ours if key in theirs})
    if differences:
        raise OvertrainError(
            f"checkpoint {checkpoint} was written by another run: its {checkpoint.name}/overtrain.json records "
            + "; ".join(differences) + " (checkpoint -> this run)",
            f"move {checkpoint} out of {checkpoint.parent} (it is not this run's: the run's own settings are in "
            f"{checkpoint.parent.parent / RUN_FILE}), then rerun",
        )


def fixed_settings(run_config: dict[str, Any]) -> dict[str, Any]:
    """The dotted result settings of a run config that stay fixed within a run (:data:`FIXED_WITHIN_A_RUN`)."""
    return {key: value for key, value in result_settings(run_config).items() if key.startswith(FIXED_WITHIN_A_RUN)}


def result_settings(run_config: dict[str, Any]) -> dict[str, Any]:
    """The dotted ``key: value`` settings of a resolved run config that define its result."""
    flat = _flatten(run_config)
    return {key: value for key, value in flat.items() if not _is_execution_key(key)}


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def settings_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["train.lr: 0.003 -> 0.001", ...]`` for every key whose value differs (or exists on one side only)."""
    missing = "(unset)"
    keys = sorted(set(old) | set(new))
    return [f"{key}: {old.get(key, missing)!r} -> {new.get(key, missing)!r}" for key in keys if old.get(key, missing) != new.get(key, missing)]


@dataclass(frozen=True)
class Binding:
    """What a run folder is bound to: its result settings, and the extensions made since it started."""

    settings: dict[str, Any]
    extensions: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {"settings_sha256": settings_hash(self.settings), "settings": self.settings, "extensions": self.extensions}


def check_run_binding(
    out_dir: Path, run_config: dict[str, Any], extend: bool, newest: tuple[int, int, dict[str, Any]] | None
) -> tuple[Binding, str | None]:
    """The binding to (re)write for this invocation and a note to print, or an error for changed settings.

    ``newest`` is (tokens_seen, step, run_config) of the run's newest checkpoint, if it has one; a run
    written before run.json existed is bound to that checkpoint's settings.
    """
    new_settings = result_settings(run_config)
    bound, differences = differences_from_binding(out_dir, run_config, newest)
    if bound is None:
        return Binding(new_settings, []), None
    if not differences:
        note = f"train.extend=true: {out_dir} already has these settings; nothing to extend" if extend else None
        return bound, note
    if not extend:
        raise _changed_settings_error(out_dir, differences, newest)
    return _extension(out_dir, bound, new_settings, differences, newest, run_config)


def differences_from_binding(
    out_dir: Path, run_config: dict[str, Any], newest: tuple[int, int, dict[str, Any]] | None = None
) -> tuple[Binding | None, list[str]]:
    """What ``out_dir`` is bound to (None for a new folder), and the settings in which ``run_config`` differs from it."""
    bound = read_binding(out_dir, newest)
    return bound, ([] if bound is None else settings_differences(bound.settings, result_settings(run_config)))


def read_binding(out_dir: Path, newest: tuple[int, int, dict[str, Any]] | None) -> Binding | None:
    path = Path(out_dir) / RUN_FILE
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            return Binding(dict(data["settings"]), list(data.get("extensions", [])))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise OvertrainError(
                f"{path} is damaged ({type(error).__name__}: {error})",
                f"delete {path}: it is rebuilt from the newest checkpoint's settings",
            ) from None
    if newest is not None:
        return Binding(result_settings(newest[2]), [])
    return None


def write_binding(out_dir: Path, binding: Binding) -> None:
    atomic_write_json(Path(out_dir) / RUN_FILE, binding.as_json())


def _changed_settings_error(out_dir: Path, differences: list[str], newest: tuple[int, int, dict[str, Any]] | None) -> OvertrainError:
    trained = f"trained to {format_tokens(newest[0])} tokens" if newest else "started (no checkpoint yet)"
    folder = Path(out_dir)
    user_folder = folder.parent if folder.name.startswith("budget-") else folder  # a ladder's rung: its out_dir is the ladder's
    extend = ("to continue this run under them from its newest checkpoint, add train.extend=true" if newest else
              "to start it over under them in this folder (it kept no checkpoint), add train.extend=true")
    return OvertrainError(
        f"{out_dir} holds a run {trained} with other settings than this config: " + "; ".join(differences),
        f"to train these settings, use a new out_dir (e.g. out_dir={user_folder.with_name(user_folder.name + '-2')}); {extend}; "
        f"to resume it as it was, restore its settings (they are in {Path(out_dir) / 'config.yaml'})",
    )


def _extension(
    out_dir: Path,
    bound: Binding,
    new_settings: dict[str, Any],
    differences: list[str],
    newest: tuple[int, int, dict[str, Any]] | None,
    run_config: dict[str, Any],
) -> tuple[Binding, str]:
    fixed = [line for line in differences if line.startswith(FIXED_WITHIN_A_RUN)]
    if fixed:
        raise OvertrainError(
            f"train.extend=true cannot continue {out_dir} across these changes: " + "; ".join(fixed),
            "the model, the data, train.seed, train.batch_size and train.seq_len stay fixed within a run: use a new out_dir",
        )
    if newest is None:
        return Binding(new_settings, bound.extensions), f"extending {out_dir}: it has no checkpoint yet, so it starts over with the new settings"
    tokens, step, _ = newest
    budget = run_config["train"]["max_tokens"]
    if tokens > budget:
        raise OvertrainError(
            f"{out_dir} is already trained to {tokens:,} tokens, beyond train.max_tokens={budget:,}",
            f"raise train.max_tokens to at least {tokens:,}, or train the smaller budget in a new out_dir",
        )
    record = {"at_tokens": tokens, "at_step": step, "changes": differences, "previous_settings_sha256": settings_hash(bound.settings)}
    note = (
        f"extending {out_dir} from its checkpoint at {format_tokens(tokens)} tokens (step {step}) under new settings: "
        + "; ".join(differences)
        + f". Steps up to {step} keep the old settings; from step {step} on, training (learning-rate schedule included) "
        f"follows the new ones. The change is recorded in {Path(out_dir) / RUN_FILE}."
    )
    return Binding(new_settings, [*bound.extensions, record]), note


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and not dotted.endswith("init_std_overrides"):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _is_execution_key(key: str) -> bool:
    return any(key == item or key.startswith(item + ".") for item in EXECUTION_KEYS)
