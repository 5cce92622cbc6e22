"""Instruction tuning: the sdist-backed chat tasks, the Hub chat formats, packing and the instruction read-outs.

Nothing is downloaded: each test writes a small .tar.gz with the real sdists' internal layout
(``bigbench-1.0.0/bigbench/benchmark_tasks/<set>/.../task.json``, ``alpaca_eval-0.6.6/example/outputs.json``)
into a private overtrain cache, or a small file in the Hub datasets' real schema.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import write_untrained_checkpoint

from overtrain.errors import OvertrainError
from overtrain.tasks import instruct, load_task

DEFINITION = ("Definition: In this task, you write a question about the passage. Things to Avoid: questions without answers. "
              "Emphasis/Caution: be brief.  Prompt: Write a question.")
CONVERSATION = ["Are you a football fan?", "Yes, I am.", "Did you know the locker room is pink?", "I did not!", "It is true.", "Wow."]


def _add_json(archive: tarfile.TarFile, name: str, data) -> None:
    payload = json.dumps(data).encode("utf-8")
    member = tarfile.TarInfo(name)
    member.size = len(payload)
    archive.addfile(member, io.BytesIO(payload))


def topical_chat_rows(conversation: list[str], comment: str) -> list[dict]:
    """BIG-bench's form: one row per turn after the first, the next speaker always labelled agent_B."""
    rows = []
    for index in range(1, len(conversation)):
        speakers = ["agent_A" if (index - turn) % 2 else "agent_B" for turn in range(index)]
        history = " ".join(f'{speaker}: "{text}"' for speaker, text in zip(speakers, conversation[:index]))
        rows.append({"input": history, "target": f'"{conversation[index]}"', "comment": comment})
    return rows


def write_bigbench_sdist(path: Path, ni_examples: int = 40) -> Path:
    root = "bigbench-1.0.0/bigbench/benchmark_tasks"
    with tarfile.open(path, "w:gz") as archive:
        _add_json(archive, f"{root}/natural_instructions/task.json", {"name": "natural_instructions"})
        for subtask in ("subtask001_a", "subtask002_b"):
            examples = [{"input": f"Passage: {subtask} fact number {i}.", "target": [f"What is fact {i}?", "other"]} for i in range(ni_examples)]
            _add_json(archive, f"{root}/natural_instructions/{subtask}/task.json", {"task_prefix": DEFINITION, "examples": examples})
        rows = [row for index in range(30) for row in topical_chat_rows([f"{text} ({index})" for text in CONVERSATION], f"t_{index}")]
        _add_json(archive, f"{root}/topical_chat/task.json", {"examples": rows})
        _add_json(archive, f"{root}/hhh_alignment/task.json", {"name": "hhh_alignment"})
        for subset in ("harmless", "helpful"):
            examples = [{"input": f"Question {subset} {i}?", "target_scores": {f"Good answer {i}.": 1, f"Bad answer {i}.": 0}} for i in range(3)]
            _add_json(archive, f"{root}/hhh_alignment/{subset}/task.json", {"examples": examples})
        _add_json(archive, f"{root}/other_task/task.json", {"examples": []})
    return path


ALPACA_ROWS = [{"instruction": f"Name a colour number {i}.", "output": f"Colour {i} is blue.", "generator": "example",
                "dataset": "helpful_base" if i % 2 else "koala", "datasplit": "eval"} for i in range(60)]


def write_alpaca_sdist(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        _add_json(archive, "alpaca_eval-0.6.6/example/outputs.json", ALPACA_ROWS)
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private overtrain cache holding the two small sdists under their real names."""
    monkeypatch.setenv("OVERTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(instruct.INDEX_ENVIRONMENT, "http://127.0.0.1:9/simple")  # closed port: a download attempt fails at once
    packages = tmp_path / "cache" / "packages"
    packages.mkdir(parents=True)
    write_bigbench_sdist(packages / instruct.BIGBENCH.filename)
    write_alpaca_sdist(packages / instruct.ALPACA_EVAL.filename)
    return tmp_path / "cache"


def test_natural_instructions_are_chats_of_definition_and_input_with_a_fixed_split(cache: Path) -> None:
    first = load_task("natural_instructions", seed=0)
    example = first.train[0]
    user, assistant = example.messages
    assert user[0] == "user" and user[1].startswith("Definition: In this task") and "\nPrompt: Write a question.\n\nPassage:" in user[1]
    assert "Things to Avoid" not in user[1] and "Emphasis" not in user[1]
    assert assistant[0] == "assistant" and assistant[1].startswith("What is fact")  # the first reference output
    assert len(first.train) + len(first.heldout) == 80
    heldout_keys = {example.messages[0][1] for example in first.heldout}
    assert heldout_keys.isdisjoint(example.messages[0][1] for example in first.train)
    # subtasks take turns in the held-out order
    assert {example.messages[0][1].split("Passage: ")[1].split(" ")[0] for example in first.heldout[:2]} == {"subtask001_a", "subtask002_b"}
    # the seed shuffles train only; converted once: the sdist is no longer read
    (cache / "packages" / instruct.BIGBENCH.filename).unlink()
    second = load_task("natural_instructions", seed=1)
    assert second.heldout == first.heldout and sorted(map(str, second.train)) == sorted(map(str, first.train)) and second.train != first.train


def test_natural_instructions_are_parsed_once_per_process_and_again_when_the_file_changes(cache: Path) -> None:
    import os

    instruct._natural_instruction_pools.cache_clear()
    first = load_task("natural_instructions", seed=0)
    again = load_task("natural_instructions", seed=0)
    assert instruct._natural_instruction_pools.cache_info().hits == 1
    assert again.train == first.train and again.heldout == first.heldout  # the same splits as a fresh parse
    # an edited converted file (new size and time) is parsed again, not served from memory
    converted = instruct.converted_file(instruct.BIGBENCH, "natural_instructions", None, "natural_instructions")
    rows = list(instruct.read_jsonl_gz(converted))
    instruct.write_jsonl_gz(converted, rows[: len(rows) // 2])
    os.utime(converted, ns=(converted.stat().st_atime_ns, converted.stat().st_mtime_ns + 10**9))
    edited = load_task("natural_instructions", seed=0)
    assert instruct._natural_instruction_pools.cache_info().misses == 2
    assert len(edited.train) + len(edited.heldout) < len(first.train) + len(first.heldout)


def test_topical_chat_rebuilds_conversations_and_trains_each_turn_once(cache: Path) -> None:
    splits = load_task("topical_chat")
    conversation = [text for text in CONVERSATION]
    chats = [example.messages for example in splits.train + splits.heldout if example.messages[0][1].endswith("(0)")]
    assert len(chats) == 2  # each speaker once as the assistant
    trained = sorted(text for chat in chats for role, text in chat if role == "assistant")
    assert trained == sorted(f"{text} (0)" for text in conversation[1:])  # every turn after the opening one, once
    assert all(chat[0][0] == "user" and [role for role, _ in chat] == ["user", "assistant"] * (len(chat) // 2) for chat in chats)
    held = {example.messages[0][1].split("(")[-1] for example in splits.heldout}
    assert held.isdisjoint(example.messages[0][1].split("(")[-1] for example in splits.train)  # whole conversations held out


def test_alpaca_eval_responses_are_the_example_outputs(cache: Path) -> None:
    splits = load_task("alpaca_eval")
    assert len(splits.train) + len(splits.heldout) == len(ALPACA_ROWS) and splits.train
    for example in splits.train:
        (_, instruction), (_, output) = example.messages
        assert output == ALPACA_ROWS[int(instruction.split()[-1].rstrip("."))]["output"]
    assert "not gold answers" in splits.description


def test_missing_sdist_offline_is_one_clear_error(cache: Path) -> None:
    (cache / "packages" / instruct.BIGBENCH.filename).unlink()
    with pytest.raises(OvertrainError) as caught:
        load_task("topical_chat")
    assert "bigbench==1.0.0" in str(caught.value) and "pip download --no-deps --no-binary :all: bigbench==1.0.0" in str(caught.value)
    assert not list((cache / "packages").glob("bigbench*"))


def test_download_keeps_only_a_file_with_the_pinned_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    served = write_alpaca_sdist(tmp_path / "served.tar.gz")
    monkeypatch.setattr(instruct, "_sdist_url", lambda sdist, destination: served.as_uri())
    good = instruct.Sdist("alpaca-eval", "0.6.6", "alpaca_eval-0.6.6.tar.gz", hashlib.sha256(served.read_bytes()).hexdigest())
    instruct.download_sdist(good, tmp_path / "packages" / good.filename)
    assert (tmp_path / "packages" / good.filename).read_bytes() == served.read_bytes()
    with pytest.raises(OvertrainError, match="not the pinned"):
        instruct.download_sdist(instruct.ALPACA_EVAL, tmp_path / "other" / good.filename)
    assert not list((tmp_path / "other").iterdir())  # no half-written or wrong file left


def test_hub_chat_sets_read_their_real_schema_offline(tmp_path: Path) -> None:
    hh = tmp_path / "hh"
    hh.mkdir()
    dialogue = "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water for 8 minutes.\n\nHuman: Thanks\n\nAssistant: You're welcome."
    for split, count in (("train", 20), ("test", 5)):
        rows = [{"chosen": dialogue.replace("egg", f"egg {split}{i}"), "rejected": "\n\nHuman: x\n\nAssistant: no."} for i in range(count)]
        (hh / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    splits = load_task("hh-rlhf", data_path=hh)
    assert len(splits.train) == 20 and len(splits.heldout) == 5
    assert splits.train[0].messages[1] == ("assistant", "Put it in boiling water for 8 minutes.")
    assert [role for role, _ in splits.train[0].messages] == ["user", "assistant", "user", "assistant"]
    tulu = tmp_path / "tulu.jsonl"
    rows = [{"dataset": "x", "id": str(i), "messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": f"Hi {i}"},
                                                         {"role": "assistant", "content": f"Hello {i}!"}]} for i in range(200)]
    rows.append({"dataset": "x", "id": "bad", "messages": [{"role": "tool", "content": "?"}, {"role": "assistant", "content": "!"}]})
    tulu.write_text("".join(json.dumps(row) + "\n" for row in rows))
    splits = load_task("tulu-v2", data_path=tulu)
    assert len(splits.train) + len(splits.heldout) == 200 and splits.heldout  # the row with an unknown role is dropped
    assert splits.train[0].messages[0] == ("system", "Be kind.")


def test_packing_keeps_every_target_and_fills_rows(tmp_path: Path) -> None:
    from overtrain.model.loss import IGNORE_INDEX
    from overtrain.probes.finetune import FinetuneConfig, run_finetune_probe
    from overtrain.probes.target import load_probe_target
    from overtrain.probes.task_batches import EncodedExample, pack_examples

    examples = [EncodedExample([1, 2, 3], [IGNORE_INDEX, 3, 4]), EncodedExample([5, 6], [IGNORE_INDEX, 7]), EncodedExample([8] * 5, [9] * 5)]
    rows = pack_examples(examples, max_len=6)
    assert [row.input_ids for row in rows] == [[1, 2, 3, 5, 6], [8] * 5]
    assert [t for row in rows for t in row.target_ids] == [t for ex in examples for t in ex.target_ids]

    checkpoint = write_untrained_checkpoint(tmp_path / "run")
    chat = tmp_path / "chat.jsonl"
    records = [{"messages": [{"role": "user", "content": f"add {i} and 1"}, {"role": "assistant", "content": f"{i + 1}"}]} for i in range(60)]
    chat.write_text("".join(json.dumps(record) + "\n" for record in records))
    (tmp_path / "eval.txt").write_text("the quick brown fox\n" * 200)
    target = load_probe_target(checkpoint, 128, str(tmp_path / "eval.txt"), eval_seq_len=16, dtype="fp32")
    plain = FinetuneConfig(task=f"file:{chat}", lr=1e-3, steps=2, batch_size=2, max_len=64, max_heldout=4)
    packed = FinetuneConfig(**{**plain.__dict__, "pack": True})
    from overtrain.probes.finetune import EncodedTask

    unpacked_task, packed_task = EncodedTask(target, plain), EncodedTask(target, packed)
    assert len(packed_task.train) < len(unpacked_task.train) and all(len(row.input_ids) <= 64 for row in packed_task.train)
    assert sum(len(row.target_ids) for row in packed_task.train) == sum(len(row.target_ids) for row in unpacked_task.train)
    record = run_finetune_probe(target, packed, packed_task)
    assert record.train_tokens > 2 * 2 * 2  # two steps of two packed rows hold several examples' answers each


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    from overtrain.checkpoints.folder import load_model
    from overtrain.data.tokenizer import load_tokenizer

    checkpoint = write_untrained_checkpoint(tmp_path_factory.mktemp("instruct_model") / "run")
    model, _ = load_model(checkpoint)
    return checkpoint, model.eval(), load_tokenizer(checkpoint)


def test_multiple_choice_accuracy_ranks_by_the_models_own_likelihoods(tiny_model, cache: Path) -> None:
    from overtrain.probes.instruct_readouts import hhh_alignment_accuracy, multiple_choice_accuracy
    from overtrain.probes.task_batches import token_ids

    _, model, tokenizer = tiny_model
    result = hhh_alignment_accuracy(model, tokenizer)
    assert result.items == 6 and set(result.by_group) == {"harmless", "helpful"} and result.chance == 0.5

    def mean_logprob(context: str, choice: str) -> float:  # scored independently: one forward pass over the whole text
        ids, start = token_ids(tokenizer, context) + token_ids(tokenizer, choice), len(token_ids(tokenizer, context))
        logprobs = torch.log_softmax(model(torch.tensor([ids]))[0, :-1].float(), -1)
        return float(logprobs.detach()[torch.arange(start - 1, len(ids) - 1), torch.tensor(ids[start:])].mean())

    items = instruct.hhh_alignment_items()
    expected = sum(max(range(2), key=lambda c: mean_logprob(item.context, item.choices[c])) == item.label for item in items) / len(items)
    assert result.accuracy == pytest.approx(expected)
    flipped = [instruct.ChoiceItem(item.context, item.choices, 1 - item.label) for item in items]
    assert multiple_choice_accuracy(model, tokenizer, flipped).accuracy == pytest.approx(1 - expected)


def test_batched_greedy_answers_equal_one_at_a_time_and_export_in_alpaca_eval_format(tiny_model, cache: Path, tmp_path: Path) -> None:
    from overtrain.cli import main as cli_main
    from overtrain.probes.instruct_readouts import (
        _generate_recomputing,
        _generate_transformers,
        end_of_text_of,
        generation_twin,
        greedy_answers,
        instruction_prompt,
    )
    from overtrain.probes.task_batches import token_ids

    checkpoint, model, tokenizer = tiny_model
    instructions = ["def f(x):", "the quick brown fox jumps over", "x"]
    batched = greedy_answers(model, tokenizer, instructions, max_new_tokens=6, batch_size=3)
    assert batched == [greedy_answers(model, tokenizer, [text], max_new_tokens=6, batch_size=1)[0] for text in instructions]
    # the KV-cached transformers twin decodes exactly what re-running our model per token decodes
    prompts = [token_ids(tokenizer, instruction_prompt(text, None)) for text in instructions]
    stop = end_of_text_of(tokenizer)
    assert _generate_transformers(generation_twin(model), prompts, 6, stop) == _generate_recomputing(model, prompts, 6, stop)
    out = tmp_path / "answers.json"
    assert cli_main(["alpaca-export", str(checkpoint), "--out", str(out), "--limit", "3", "--max-new-tokens", "4", "--generator", "tiny"]) == 0
    rows = json.loads(out.read_text())
    assert [set(row) for row in rows] == [{"instruction", "output", "generator", "dataset"}] * 3
    assert [row["instruction"] for row in rows] == [row["instruction"] for row in ALPACA_ROWS[:3]] and rows[0]["generator"] == "tiny"
    assert rows[0]["output"] == greedy_answers(model, tokenizer, [ALPACA_ROWS[0]["instruction"]], max_new_tokens=4)[0]


def test_relevance_is_the_encoders_cosine_with_a_mismatched_reference(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from overtrain.probes.instruct_readouts import SentenceEncoder, relevance_of

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "boil", "an", "egg", "paint", "a", "wall", "sing", "song"]
    raw = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(tmp_path / "encoder")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(tmp_path / "encoder")
    encoder = SentenceEncoder(tmp_path / "encoder")
    instructions = ["boil an egg", "paint a wall", "sing a song"]
    same = relevance_of(instructions, instructions, encoder)
    assert same.mean_cosine == pytest.approx(1.0, abs=1e-5) and same.mismatched_cosine < 0.95
    blank = relevance_of(instructions, ["", "paint a wall", "   "], encoder)
    assert blank.empty_answers == 2 and blank.mean_cosine == pytest.approx(1 / 3, abs=1e-5)
