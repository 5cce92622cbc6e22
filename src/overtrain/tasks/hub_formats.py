"""The paper's fine-tuning datasets on the Hugging Face Hub: where each lives and how a row becomes an example.

Each :class:`HubSpec` names the Hub dataset (path, config, revision), its train and held-out splits and a
converter from one row, in the dataset's real schema, to a :class:`TaskExample`. The same converter
reads the Hub and local files (``data_path``), so a local copy must use the same field names.

Schemas (field names and label conventions of the Hub datasets):

- ``openai/gsm8k`` config ``main``: ``question``, ``answer`` (worked answer, ``<<48/2=24>>`` calculator
  notes, last line ``#### 72``); splits train 7,473 / test 1,319.
- ``allenai/social_i_qa``: ``context``, ``question``, ``answerA``, ``answerB``, ``answerC``, ``label``
  (the string "1", "2" or "3"); train 33,410 / validation 1,954. A loading-script dataset: read from the
  Hub's ``refs/convert/parquet`` branch, since ``datasets`` 4+ runs no scripts.
- ``bigcode/starcoderdata`` data_dir ``python``: ``content`` (a source file), ``max_stars_repo_path``,
  ``max_stars_repo_name``, ``max_stars_count``, ``id``; one train split (gated: accept the terms and log in).
- ``cornell-movie-review-data/rotten_tomatoes``: ``text``, ``label`` (0 negative, 1 positive); train
  8,530 / validation 1,066 / test 1,066. GLUE SST-2 rows (``sentence``, same labels) are accepted too.
- ``nyu-mll/glue`` config ``rte``: ``sentence1``, ``sentence2``, ``label`` (0 entailment,
  1 not_entailment; -1 in the test split, whose labels are hidden), ``idx``; train 2,490 / validation 277.
- ``CogComp/trec``: ``text``, ``coarse_label`` (0 ABBR, 1 ENTY, 2 DESC, 3 HUM, 4 LOC, 5 NUM),
  ``fine_label``; train 5,452 / test 500. A loading-script dataset: read from ``refs/convert/parquet``.

Instruction-tuning sets (chat examples: the loss is on the assistant turns only):

- ``Anthropic/hh-rlhf``: ``chosen``, ``rejected`` (each a whole dialogue as text,
  ``"\n\nHuman: ...\n\nAssistant: ..."``); splits train / test. Only ``chosen`` is read: the
  preferred dialogue, split into its Human (user) and Assistant turns.
- ``allenai/tulu-v2-sft-mixture``: ``dataset``, ``id``, ``messages`` (``[{"role", "content"}]``, roles
  system/user/assistant); one train split, streamed, 5% held out by a hash of the text.
- ``allenai/tulu-3-sft-mixture``: ``id``, ``messages``, ``source``; one train split, streamed and held out
  the same way. (Row counts of the three sets were not checked here: this machine has no Hub access.)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from overtrain.errors import OvertrainError
from overtrain.tasks.records import TaskExample
from overtrain.tasks.user_file import ROLES, record_to_example

RowConverter = Callable[[dict, int], TaskExample | None]  # (row, max_chars) -> example, None to drop the row
PARQUET_EXPORT = "refs/convert/parquet"

_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_STARCODER_METADATA = re.compile(r"^(?:<(?:reponame|filename|gh_stars)>[^\n<]*)+\n?")
SENTIMENT_CHOICES = (" negative", " positive")
ENTAILMENT_CHOICES = (" True", " False")
TREC_CHOICES = (" abbreviation", " entity", " description", " human", " location", " number")


@dataclass(frozen=True)
class HubSpec:
    """Where a paper dataset lives on the Hub and how its rows become examples."""

    name: str
    hub_path: str
    to_example: RowConverter
    train_split: str = "train"
    heldout_split: str | None = "test"
    """None: no labelled held-out split; rows are held out by a hash of their text (``heldout_fraction``)."""
    config: str | None = None
    revision: str | None = None
    data_dir: str | None = None
    streaming: bool = False
    """Stream from the Hub (for corpora too large to download); reads ``default_*`` rows at most."""
    heldout_fraction: float = 0.2
    default_train: int | None = None
    default_heldout: int | None = None
    overlap_by_prompt: bool = True
    """Drop train examples whose prompt is held out; False where prompts repeat by design (file paths)."""


def field(row: dict, *names: str) -> object:
    """The first of ``names`` present in ``row``; an error naming the expected fields otherwise."""
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise OvertrainError(
        f"a row lacks the field {' or '.join(repr(name) for name in names)} (its fields: {sorted(row)}).",
        "give data in the dataset's real schema (field names in docs/tasks.md).",
    )


def _choice_example(prompt: str, choices: tuple[str, ...], label: int) -> TaskExample | None:
    if not 0 <= label < len(choices):
        return None  # hidden (-1) or out-of-range labels: not usable for training or scoring
    return TaskExample(prompt=prompt, completion=choices[label], choices=choices, label=label)


def gsm8k_example(row: dict, max_chars: int) -> TaskExample:
    """GSM8K: question -> worked answer ending ``#### N`` (calculator notes removed)."""
    answer = _CALCULATOR_NOTE.sub("", str(field(row, "answer"))).strip()
    return TaskExample(prompt=f"Question: {str(field(row, 'question')).strip()}\nAnswer:", completion=f" {answer}")


def siqa_example(row: dict, max_chars: int) -> TaskExample | None:
    """SocialIQA: context + question -> one of three answers; label "1".."3" becomes index 0..2."""
    choices = tuple(f" {str(field(row, key)).strip()}" for key in ("answerA", "answerB", "answerC"))
    prompt = f"{str(field(row, 'context')).strip()}\nQuestion: {str(field(row, 'question')).strip()}\nAnswer:"
    return _choice_example(prompt, choices, int(str(field(row, "label")).strip()) - 1)


def starcoder_example(row: dict, max_chars: int) -> TaskExample | None:
    """Starcoder-Python: the file's path as a comment -> the file's first lines (cut at ``max_chars``)."""
    path = str(row.get("max_stars_repo_path") or "unknown.py")
    prompt = f"# file: {path}\n"
    content = _STARCODER_METADATA.sub("", str(field(row, "content"))).strip("\n")
    budget = max_chars - len(prompt)
    if budget <= 0 or not content.strip():
        return None
    if len(content) > budget:
        cut = content.rfind("\n", 0, budget)
        content = content[: cut if cut > 0 else budget]
    return TaskExample(prompt=prompt, completion=content + "\n")


def movie_review_example(row: dict, max_chars: int) -> TaskExample | None:
    """MR (rotten_tomatoes) or SST-2: review -> " negative" / " positive"."""
    text = str(field(row, "text", "sentence")).strip()
    return _choice_example(f"Review: {text}\nSentiment:", SENTIMENT_CHOICES, int(field(row, "label")))


def rte_example(row: dict, max_chars: int) -> TaskExample | None:
    """RTE: premise + hypothesis -> " True" (entailment, label 0) / " False" (label 1)."""
    premise, hypothesis = (str(field(row, key)).strip() for key in ("sentence1", "sentence2"))
    prompt = f"{premise}\nQuestion: {hypothesis} True or False?\nAnswer:"
    return _choice_example(prompt, ENTAILMENT_CHOICES, int(field(row, "label")))


def trec_example(row: dict, max_chars: int) -> TaskExample | None:
    """TREC: question -> its coarse answer type (6 classes)."""
    prompt = f"Question: {str(field(row, 'text')).strip()}\nType:"
    return _choice_example(prompt, TREC_CHOICES, int(field(row, "coarse_label", "label-coarse")))


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def chat_example_or_none(turns: list[tuple[str, str]]) -> TaskExample | None:
    """A chat example of ``(role, content)`` turns; None (row dropped) when a role is unknown, a turn is
    empty or no assistant turn has text (Hub dumps hold a few such rows)."""
    if not turns or any(role not in ROLES or not content.strip() for role, content in turns):
        return None
    if not any(role == "assistant" for role, _ in turns):
        return None
    return record_to_example({"messages": [{"role": role, "content": content.strip()} for role, content in turns]}, "a Hub row")


def hh_rlhf_example(row: dict, max_chars: int) -> TaskExample | None:
    """Anthropic-HH: the ``chosen`` dialogue's Human/Assistant turns as a chat (``rejected`` is not read)."""
    pieces = _HH_TURN.split("\n\n" + str(field(row, "chosen")).lstrip("\n"))
    turns = [(HH_ROLES[speaker], text) for speaker, text in zip(pieces[1::2], pieces[2::2])]
    while turns and turns[-1][0] != "assistant":
        turns.pop()  # a dialogue that ends on a Human turn: keep it up to the last answer
    return chat_example_or_none(turns) if not pieces[0].strip() else None


def messages_example(row: dict, max_chars: int) -> TaskExample | None:
    """TULU (v2 or 3): the ``messages`` list as a chat."""
    messages = field(row, "messages")
    if not isinstance(messages, list):
        return None
    turns = [(str(m.get("role")), str(m.get("content") or "")) for m in messages if isinstance(m, dict)]
    while turns and turns[-1][0] != "assistant":
        turns.pop()
    return chat_example_or_none(turns)


HUB_SPECS = {
    spec.name: spec
    for spec in (
        HubSpec("gsm8k", "openai/gsm8k", gsm8k_example, config="main"),
        HubSpec("siqa", "allenai/social_i_qa", siqa_example, heldout_split="validation", revision=PARQUET_EXPORT),
        HubSpec(
            "starcoder-python",
            "bigcode/starcoderdata",
            starcoder_example,
            heldout_split=None,
            data_dir="python",
            streaming=True,
            heldout_fraction=0.05,
            default_train=20_000,
            default_heldout=500,
            overlap_by_prompt=False,
        ),
        HubSpec("mr", "cornell-movie-review-data/rotten_tomatoes", movie_review_example),
        HubSpec("rte", "nyu-mll/glue", rte_example, heldout_split="validation", config="rte"),
        HubSpec("trec", "CogComp/trec", trec_example, revision=PARQUET_EXPORT),
        HubSpec("hh-rlhf", "Anthropic/hh-rlhf", hh_rlhf_example),
        HubSpec("tulu-v2", "allenai/tulu-v2-sft-mixture", messages_example, heldout_split=None, streaming=True,
                heldout_fraction=0.05, default_train=20_000, default_heldout=500),
        HubSpec("tulu-3", "allenai/tulu-3-sft-mixture", messages_example, heldout_split=None, streaming=True,
                heldout_fraction=0.05, default_train=20_000, default_heldout=500),
    )
}
