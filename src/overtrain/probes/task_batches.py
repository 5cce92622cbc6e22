"""Turning task examples into token batches with the loss on completion tokens only.

An example becomes ``tokens(prompt) + tokens(completion) + <|endoftext|>``; targets are the next tokens
of the completion and the end-of-text token, every other position is ``IGNORE_INDEX``. Prompt and
completion are tokenized separately so the boundary between them is exact. Sequences longer than
``max_len`` lose tokens from the start of the prompt (the completion is what is measured).

Chat examples (``TaskExample.messages``) become segments of text, each trained or not: the assistant
turns are trained, everything else is context. They are rendered with the checkpoint's chat template
when its tokenizer folder has one, else with the plain template of :mod:`overtrain.tasks.user_file`.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from overtrain.errors import OvertrainError
from overtrain.model.loss import IGNORE_INDEX, logits_of
from overtrain.precision import autocast_context


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    """Prompt and completion tokens, without the final target token."""
    target_ids: list[int]
    """Next-token targets, IGNORE_INDEX on prompt positions."""


def encode_example(tokenizer, prompt: str, completion: str, end_of_text_id: int, max_len: int) -> EncodedExample:
    prompt_ids = _encode_plain(tokenizer, prompt)  # no BOS/EOS around each piece (a foreign tokenizer may add them)
    completion_ids = _encode_plain(tokenizer, completion) + [end_of_text_id]
    if len(completion_ids) >= max_len:
        completion_ids = completion_ids[: max_len - 1]
    prompt_ids = prompt_ids[-(max_len + 1 - len(completion_ids)) :] if prompt_ids else [end_of_text_id]
    sequence = prompt_ids + completion_ids  # length <= max_len + 1
    targets = [IGNORE_INDEX] * (len(prompt_ids) - 1) + completion_ids
    return EncodedExample(sequence[:-1], targets)


def pack_examples(examples: Sequence[EncodedExample], max_len: int) -> list[EncodedExample]:
    """Concatenate examples, in their order, into rows of at most ``max_len`` inputs (greedy: an example that
    does not fit starts the next row; none is split). Each example keeps its own (input, target) pairs, so
    every trained target is the one it had alone and nothing is trained across a boundary: the first input of
    an example follows the previous example's last input. Attention is not blocked between the examples of a
    row (cross-example attention, as in TRL's packing without ``padding_free``): an example may read the
    earlier ones as context. Fewer, fuller rows: a batch then holds more tokens."""
    rows: list[EncodedExample] = []
    inputs: list[int] = []
    targets: list[int] = []
    for example in examples:
        if inputs and len(inputs) + len(example.input_ids) > max_len:
            rows.append(EncodedExample(inputs, targets))
            inputs, targets = [], []
        inputs = inputs + list(example.input_ids)
        targets = targets + list(example.target_ids)
    if inputs:
        rows.append(EncodedExample(inputs, targets))
    return rows


def pad_batch(examples: Sequence[EncodedExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) inputs right-padded with ``pad_id`` and (B, T) targets padded with IGNORE_INDEX."""
    length = max(len(example.input_ids) for example in examples)
    inputs = torch.full((len(examples), length), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        inputs[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        targets[row, : len(example.target_ids)] = torch.tensor(example.target_ids)
    return inputs, targets


def sample_rows(count: int, batch_size: int, seed: int, step: int, stream: int = 7) -> np.ndarray:
    """Indices of the examples in fine-tuning batch ``step``: a pure function of (seed, step, stream)."""
    return np.random.default_rng([seed, step, stream]).integers(0, count, size=batch_size)


def replay_row_count(fraction: float, batch_size: int) -> int:
    """Rows of a batch of ``batch_size`` that replay pre-training text: fraction x batch_size rounded half up,
    leaving at least one task row."""
    return max(0, min(batch_size - 1, int(math.floor(fraction * batch_size + 0.5))))


def lm_example(window: np.ndarray) -> EncodedExample:
    """A window of ``n + 1`` tokens as a plain language-modelling example: n inputs, loss on all n targets."""
    ids = [int(token) for token in window]
    return EncodedExample(ids[:-1], ids[1:])


class ReplayText:
    """Pre-training text replayed during fine-tuning: windows of ``length + 1`` tokens, drawn per step from a
    token stream (random offsets) or from a fixed set of windows, a pure function of (seed, step, stream)."""

    def __init__(self, length: int, source: str, stream: np.ndarray | None = None, windows: np.ndarray | None = None) -> None:
        if (stream is None) == (windows is None):
            raise ValueError("ReplayText needs exactly one of stream and windows")
        self.length, self.source, self.stream, self.windows = length, source, stream, windows

    @classmethod
    def from_stream(cls, tokens: np.ndarray, length: int, source: str) -> ReplayText:
        length = min(length, len(tokens) - 1)
        if length < 1:
            raise OvertrainError(f"the replay text ({source}) has {len(tokens)} tokens, too few to replay", "use replay_fraction=0")
        return cls(length, source, stream=tokens)

    @classmethod
    def from_eval_text(cls, source: str, tokenizer_folder: Path, measured_len: int, measured: np.ndarray, length: int, text_field: str = "text") -> ReplayText:
        """The ``eval_data`` text cut into windows as the OOD measurement cuts it, minus the measured windows."""
        from overtrain.data.eval_text import TEXT_BYTES_PER_EVAL_TOKEN, EvalTextSettings, encode_documents, read_eval_documents

        settings = EvalTextSettings(source, measured_len, int(measured.shape[0]) * measured_len, text_field)
        tokens = encode_documents(read_eval_documents(settings, settings.eval_tokens * TEXT_BYTES_PER_EVAL_TOKEN), tokenizer_folder)
        window = measured_len + 1
        blocks = np.asarray(tokens[: len(tokens) // window * window], dtype=np.int64).reshape(-1, window)
        taken = {row.tobytes() for row in np.asarray(measured, dtype=np.int64)}
        free = np.array([row for row in blocks if row.tobytes() not in taken], dtype=np.int64).reshape(-1, window)
        if len(free) == 0:
            raise OvertrainError(
                f"eval_data {source!r} has no text outside the {len(measured)} windows the OOD loss is measured on, so nothing is left to replay",
                "give more eval_data text, lower eval_tokens, or use replay_fraction=0",
            )
        return cls(min(length, measured_len), f"eval_data {source} ({len(free)} windows not measured)", windows=free[:, : min(length, measured_len) + 1])

    def examples(self, count: int, seed: int, step: int, stream: int) -> list[EncodedExample]:
        rng = np.random.default_rng([seed, step, stream])
        if self.windows is not None:
            return [lm_example(self.windows[index]) for index in rng.integers(0, len(self.windows), size=count)]
        starts = rng.integers(0, len(self.stream) - self.length, size=count)
        return [lm_example(np.asarray(self.stream[start : start + self.length + 1])) for start in starts]


@torch.no_grad()
def completion_losses(model: torch.nn.Module, encoded: Sequence[EncodedExample], pad_id: int, batch_size: int, dtype: str) -> torch.Tensor:
    """Summed completion loss (nats) of each example, and via ``/ tokens`` the mean; shape (N, 2): sum, count."""
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(encoded), batch_size):
        inputs, targets = pad_batch(encoded[start : start + batch_size], pad_id)
        with autocast_context(device, dtype):
            logits = logits_of(model, inputs.to(device)).float()
        losses = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets.to(device), ignore_index=IGNORE_INDEX, reduction="none"
        )  # (B, T)
        mask = targets.to(device) != IGNORE_INDEX
        rows.append(torch.stack([(losses * mask).sum(1), mask.sum(1).float()], dim=1).cpu())
    return torch.cat(rows)


def check_nonempty(examples: Sequence, split: str, task: str) -> None:
    if not examples:
        raise OvertrainError(f"task {task!r} has no {split} examples", f"raise max_{split} or check the task's data")


Segment = tuple[str, bool]
"""A piece of a sequence's text and whether the loss is on its tokens."""


def encode_segments(tokenizer, segments: Sequence[Segment], end_of_text_id: int | None, max_len: int) -> EncodedExample:
    """Tokenize each segment on its own (exact boundaries), end with ``end_of_text_id`` (trained) when given,
    and cut from the left to ``max_len + 1`` tokens; a leading trained segment gets end-of-text as context."""
    ids: list[int] = []
    trained: list[bool] = []
    for text, is_trained in segments:
        pieces = _encode_plain(tokenizer, text)
        ids += pieces
        trained += [is_trained] * len(pieces)
    if end_of_text_id is not None:
        ids.append(end_of_text_id)
        trained.append(True)
    if not trained or trained[0]:
        ids.insert(0, end_of_text_id if end_of_text_id is not None else ids[0])
        trained.insert(0, False)
    ids, trained = ids[-(max_len + 1):], trained[-(max_len + 1):]
    targets = [token if is_trained else IGNORE_INDEX for token, is_trained in zip(ids[1:], trained[1:])]
    return EncodedExample(ids[:-1], targets)


def token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens added around it (a BOS per segment would be wrong), from a
    ``tokenizers.Tokenizer`` (an ``Encoding``) or a transformers tokenizer (a list)."""
    try:
        encoded = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        encoded = tokenizer.encode(text)
    return list(getattr(encoded, "ids", encoded))


_encode_plain = token_ids


def chat_template_of(folder: Path) -> str | None:
    """The tokenizer's chat template (tokenizer_config.json ``chat_template`` or chat_template.jinja), if any."""
    folder = Path(folder)
    template_file = folder / "chat_template.jinja"
    if template_file.is_file():
        return template_file.read_text(encoding="utf-8")
    config_file = folder / "tokenizer_config.json"
    if not config_file.is_file():
        return None
    template = json.loads(config_file.read_text(encoding="utf-8")).get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((item.get("template") for item in template if item.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def chat_segments(messages: Sequence[tuple[str, str]], template: str | None, special_tokens: dict[str, str] | None = None) -> list[Segment]:
    """A conversation as segments, the assistant turns trained. With a template, each assistant turn is
    what rendering it adds after the generation prompt; a template whose renderings of longer prefixes do
    not extend the shorter ones is refused (its assistant turns cannot be located)."""
    if template is None:
        from overtrain.tasks.user_file import plain_turn_header, render_plain_turn

        segments: list[Segment] = []
        for role, content in messages:
            if role == "assistant":
                segments += [(plain_turn_header(role), False), (content + "\n", True)]
            else:
                segments.append((render_plain_turn(role, content), False))
        return segments
    return _templated_segments(messages, template, special_tokens or {})


def generation_prompt(messages: Sequence[tuple[str, str]], template: str | None, special_tokens: dict[str, str] | None = None) -> str:
    """The text before the model's next (assistant) turn, rendered as fine-tuning renders chats: the template
    with ``add_generation_prompt``, or the plain template's turns and ``"Assistant: "``."""
    if template is None:
        from overtrain.tasks.user_file import plain_turn_header, render_plain_turn

        return "".join(render_plain_turn(role, content) for role, content in messages) + plain_turn_header("assistant")
    return _chat_renderer(template, special_tokens or {})(messages, True)


def _templated_segments(messages: Sequence[tuple[str, str]], template: str, special_tokens: dict[str, str]) -> list[Segment]:
    render = _chat_renderer(template, special_tokens)
    segments: list[Segment] = []
    done = ""
    for index, (role, _) in enumerate(messages):
        if role != "assistant":
            continue
        prompt, full = render(messages[:index], True), render(messages[: index + 1], False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise OvertrainError(
                "the tokenizer's chat template does not render conversations incrementally, so assistant turns cannot be located",
                "remove chat_template from tokenizer_config.json to use the plain User:/Assistant: template, or use prompt/completion records",
            )
        segments += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    whole = render(messages, False)
    if whole.startswith(done) and len(whole) > len(done):
        segments.append((whole[len(done):], False))
    return [segment for segment in segments if segment[0]]


def _chat_renderer(template: str, special_tokens: dict[str, str]):
    """A render(turns, add_generation_prompt) function; compiled once per template (compiling costs ~50 ms,
    more than rendering and tokenizing an example)."""
    return _compiled_renderer(template, tuple(sorted(special_tokens.items())))


@functools.lru_cache(maxsize=8)
def _compiled_renderer(template: str, special_items: tuple[tuple[str, str], ...]):
    special_tokens = dict(special_items)
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.filters["tojson"] = lambda value, **kwargs: json.dumps(value, ensure_ascii=False, **kwargs)
    environment.globals["raise_exception"] = raise_exception
    compiled = environment.from_string(template)

    def render(turns: Sequence[tuple[str, str]], add_generation_prompt: bool) -> str:
        conversation = [{"role": role, "content": content} for role, content in turns]
        try:
            return compiled.render(messages=conversation, add_generation_prompt=add_generation_prompt, **special_tokens)
        except TemplateError as error:
            raise OvertrainError(f"the tokenizer's chat template refused a conversation: {error}", "check the records' roles and order") from None

    return render


def special_tokens_of(folder: Path) -> dict[str, str]:
    """``bos_token``/``eos_token`` strings from tokenizer_config.json, for chat templates that use them."""
    config_file = Path(folder) / "tokenizer_config.json"
    if not config_file.is_file():
        return {}
    config = json.loads(config_file.read_text(encoding="utf-8"))
    found = {}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = config.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            found[name] = value
    return found
