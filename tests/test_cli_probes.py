"""The probe verbs as small sweeps into a store, plan-time validation, seeds=N, and chat-format batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_pretrain_config, write_stdlib_text_corpus

from overtrain.cli import main as cli_main
from overtrain.model.loss import IGNORE_INDEX
from overtrain.results.store import ResultStore
from overtrain.sweep.config import load_sweep_config
from overtrain.sweep.plan import plan_jobs

DEMO = "src/overtrain/recipes/demo.yaml"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from overtrain.pretrain.loop import train_run

    root = tmp_path_factory.mktemp("cli_probes")
    corpus = write_stdlib_text_corpus(root / "corpus", documents=20)
    config = tiny_pretrain_config(root, corpus, "train.max_tokens=4096", "train.dtype=fp32", "train.eval_every_tokens=4096")
    return train_run(config, log=lambda *_: None, show_progress=False).final_checkpoint


def test_noise_verb_is_a_resumable_sweep_into_a_store_the_report_reads(checkpoint: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "noise"
    arguments = ["noise", str(checkpoint.parent.parent), "gammas=[1,2]", "seeds=2", "eval_tokens=512", "report=false", "--out", str(out)]
    assert cli_main(arguments) == 0
    with ResultStore(out / "results.sqlite") as store:
        (row,) = store.rows(kind="noise")
    assert [(d["gamma"], d["seed"]) for d in row.metrics["draws"]] == [(1.0, 0), (1.0, 1), (2.0, 0), (2.0, 1)]
    assert row.provenance.get("checkpoint_sha256")
    # the same job, key and row as the sweep with the same settings
    sweep = load_sweep_config(None, [f"checkpoints=[{json.dumps(str(checkpoint))}]", "noise.gammas=[1,2]", "noise.seeds=[0,1]", "noise.eval_tokens=512"])
    assert [job.key for job in plan_jobs(sweep)] == [row.key]
    assert "perturbed" in capsys.readouterr().out
    assert cli_main(arguments) == 0  # resumes: nothing left to run
    assert "nothing to run" in capsys.readouterr().err
    assert cli_main(["report", str(out)]) == 0
    assert (out / "report" / "report.html").is_file()


def test_finetune_verb_on_a_users_jsonl_stores_rows_keyed_by_the_files_hash(checkpoint: Path, tmp_path: Path) -> None:
    data = tmp_path / "mine.jsonl"
    rows = [{"prompt": f"def add_{i}(x):\n", "completion": f"    return x + {i}\n"} for i in range(24)]
    rows += [{"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"{i}"}]} for i in range(8)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "ft"
    arguments = ["finetune", str(checkpoint), f"task=file:{data}", "lr=1e-3", "steps=2", "batch_size=4", "eval_tokens=512",
                 "report=false", "--out", str(out)]
    assert cli_main(arguments) == 0
    with ResultStore(out / "results.sqlite") as store:
        (row,) = store.rows(kind="finetune")
    assert row.metrics["task"] == f"file:{data}" and row.spec["task_sha256"]
    data.write_text(data.read_text() + json.dumps({"text": "one more record"}) + "\n")
    config = load_sweep_config(None, [f"checkpoints=[{json.dumps(str(checkpoint))}]", f"finetune.task=file:{data}", "finetune.lr=1e-3",
                                      "finetune.steps=2", "finetune.batch_size=4", "finetune.eval_tokens=512"])
    assert [job.key for job in plan_jobs(config)] != [row.key]  # an edited file is a new job


def test_seeds_n_means_n_seeds_in_sweeps_and_on_the_command_line() -> None:
    config = load_sweep_config(DEMO, ["out_dir=runs/x", "noise.seeds=3", "finetune.seeds=2", "finetune.seed=7"][:3])
    assert config.noise.seeds == [0, 1, 2] and config.finetune.seeds == [0, 1]
    assert load_sweep_config(DEMO, ["noise.seeds=[4]", "finetune.seed=7"]).finetune.seeds == [7]
    assert load_sweep_config(DEMO, ["noise.seeds=[4]"]).noise.seeds == [4]
    from overtrain.cli.probes import probe_overrides

    cli = load_sweep_config(None, probe_overrides("noise", ["hf:org/m@v1"], ["seeds=3"], "runs/x"))
    assert cli.noise.seeds == [0, 1, 2]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("noise.gammas=[-1,2]", "noise.gammas holds -1.0, which is negative"),
        ("noise.gammas=[.nan]", "not a number"),
        ("noise.gammas=abc", "must be a number, got 'abc'"),
        ("noise.gammas=[]", "noise.gammas=[] is empty"),
        ("noise.gammas=[1,1]", "repeats a value"),
        ("noise.seeds=[]", "noise.seeds=[] is empty"),
        ("noise.seeds=0", "noise.seeds=0 is not a number of seeds"),
        ("finetune.lrs=[]", "finetune.lrs=[] is empty"),
        ("finetune.tasks=[]", "finetune.tasks=[] is empty"),
        ("finetune.task=wordnet-clas", "unknown task 'wordnet-clas'"),
        ("finetune.reg_lambda=.nan", "finetune.reg_lambda=nan is invalid"),
        ("finetune.warmup_fraction=1", "finetune.warmup_fraction=1.0 is invalid"),
        ("finetune.warmup_fraction=-0.1", "finetune.warmup_fraction=-0.1 is invalid"),
        ("finetune.max_len=0", "finetune.max_len=0 is invalid"),
        ("finetune.max_len=1", "finetune.max_len=1 is invalid"),
        ("executor.workers=0", "executor.workers=0 is invalid"),
        ("noise.eval_tokens=0", "noise.eval_tokens=0 is invalid"),
    ],
)
def test_bad_settings_are_refused_by_the_dry_run_with_one_message(override: str, message: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["sweep", DEMO, f"out_dir={tmp_path}", override, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1 and "lower" not in err
    assert not (tmp_path / "results.sqlite").exists()


def test_probe_verbs_validate_before_running(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for arguments in (["noise", str(checkpoint), "gammas=[-1]"], ["noise", str(checkpoint), "gammas=abc"],
                      ["finetune", str(checkpoint), "task=no-such-task"], ["finetune", str(checkpoint), "max_len=1"],
                      ["finetune", str(checkpoint), "reg_lambda=.nan"], ["noise", str(checkpoint), "gamas=[1]"]):
        assert cli_main([*arguments, "--dry-run", "--out", str(tmp_path / "o")]) == 2, arguments
    assert "did you mean gammas?" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert cli_main(["noise", str(checkpoint), "--out", str(tmp_path / "file")]) == 2


def test_generated_help_lists_every_key_with_its_docstring(capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from overtrain.sweep.config import FinetuneSweep

    with pytest.raises(SystemExit):
        cli_main(["finetune", "--help"])
    text = capsys.readouterr().out
    for item in dataclasses.fields(FinetuneSweep):
        assert f"  {item.name}=" in text, item.name
    flat = " ".join(text.split())
    assert "Share of the steps spent in linear warmup" in flat and "N seeds (0..N-1)" in flat
    with pytest.raises(SystemExit):
        cli_main(["sweep", "--help"])
    assert "noise.gammas=" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["theory", "--help"])
    theory = " ".join(capsys.readouterr().out.split())
    assert "network.hidden_dim=32 h: hidden width" in theory and "pretrain.spectrum_top=" in theory


def test_sweep_takes_out_as_its_folder_like_the_probe_verbs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(Path(__file__).resolve().parents[1] / "configs" / "demo" / "sweep_small.yaml")
    out = tmp_path / "mine"
    assert cli_main(["sweep", spec, "--out", str(out), "--dry-run"]) == 0
    assert f"store {out / 'results.sqlite'}" in capsys.readouterr().out
    assert cli_main(["sweep", spec, "--out", str(out), f"out_dir={tmp_path / 'other'}", "--dry-run"]) == 2
    assert "--out" in capsys.readouterr().err and not out.exists()


def test_the_finetune_section_is_derived_from_finetune_config() -> None:
    import dataclasses

    from overtrain.probes.finetune import FinetuneConfig
    from overtrain.sweep.config import FINETUNE_AXES, FinetuneSweep

    section = {f.name for f in dataclasses.fields(FinetuneSweep)}
    settings = {f.name for f in dataclasses.fields(FinetuneConfig)}
    assert section == (settings - set(FINETUNE_AXES)) | set(FINETUNE_AXES.values()) | {"eval_tokens", "eval_data", "eval_text_field", "variants"}


def test_eval_data_goes_into_the_job_spec_only_when_set() -> None:
    hub = "checkpoints=[hf:org/m@step1]"
    plain = plan_jobs(load_sweep_config(None, [hub, "noise.gammas=[1]", "finetune.lrs=[1e-3]"]))
    assert all("eval_data" not in job.spec for job in plain)
    jobs = plan_jobs(load_sweep_config(None, [hub, "noise.gammas=[1]", "finetune.lrs=[1e-3]", "eval_data=text.txt",
                                              "noise.eval_data=other.txt"]))
    assert {job.kind: job.spec["eval_data"] for job in jobs} == {"noise": "other.txt", "finetune": "text.txt"}
    revisions = plan_jobs(load_sweep_config(None, ["checkpoints=[hf:org/m@step1,hf:org/m@step2]", "noise.gammas=[1]"]))
    assert [job.spec["checkpoint"] for job in revisions] == ["hf:org/m@step1", "hf:org/m@step2"]
    assert len({job.key for job in revisions}) == 2


def test_eval_data_whose_records_hold_their_text_elsewhere_is_read_by_eval_text_field(
        checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The hint of a record without a ``text`` field names a setting the probe verbs take, and it works."""
    records = tmp_path / "eval.jsonl"
    records.write_text("".join(json.dumps({"body": f"Paragraph {i}: the quick brown fox jumps over the lazy dog {i * 7}."}) + "\n"
                               for i in range(300)))
    common = ["gammas=[0.01]", "seeds=1", f"eval_data={records}", "eval_tokens=256", "report=false", "--out", str(tmp_path / "out")]
    assert cli_main(["noise", str(checkpoint), *common]) != 0
    said = capsys.readouterr()
    assert "has no 'text' field; its fields are: 'body'" in said.out + said.err
    assert "eval_text_field=<field> for a probe's eval_data" in said.out + said.err
    assert cli_main(["noise", str(checkpoint), *common, "eval_text_field=body"]) == 0
    with ResultStore(tmp_path / "out" / "results.sqlite") as store:
        assert [row.spec["eval_text_field"] for row in store.rows(kind="noise")] == ["body"]
    plain = plan_jobs(load_sweep_config(None, ["checkpoints=[hf:org/m@step1]", "noise.gammas=[1]", "eval_data=text.txt"]))
    assert all("eval_text_field" not in job.spec for job in plain)  # at its default: the keys of older stores


def test_chat_records_train_on_assistant_turns_only(checkpoint: Path) -> None:
    from overtrain.data.tokenizer import load_tokenizer
    from overtrain.probes.task_batches import chat_segments, encode_segments

    tokenizer = load_tokenizer(checkpoint)
    messages = (("user", "add one"), ("assistant", "x + 1"), ("user", "and two"), ("assistant", "x + 2"))
    segments = chat_segments(messages, None)
    assert [text for text, trained in segments if trained] == ["x + 1\n", "x + 2\n"]
    encoded = encode_segments(tokenizer, segments, 0, max_len=256)
    trained = [t for t in encoded.target_ids if t != IGNORE_INDEX]
    expected = tokenizer.encode("x + 1\n").ids + tokenizer.encode("x + 2\n").ids + [0]
    assert trained == expected
    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    templated = chat_segments(messages, chatml)
    assert [text for text, trained in templated if trained] == ["x + 1<|im_end|>\n", "x + 2<|im_end|>\n"]
    assert "".join(text for text, _ in templated).startswith("<|im_start|>user\nadd one<|im_end|>\n<|im_start|>assistant\n")


def test_probe_verbs_on_a_hugging_face_folder_store_its_identity_and_use_its_chat_template(
        checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    import torch
    import transformers

    monkeypatch.setenv("OVERTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    vocab = len(json.loads((checkpoint / "tokenizer.json").read_text())["model"]["vocab"])
    config = transformers.Qwen2Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=64, max_position_embeddings=64, eos_token_id=0, bos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    model = tmp_path / "qwen"
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(model)
    shutil.copy2(checkpoint / "tokenizer.json", model / "tokenizer.json")
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    from overtrain.probes.task_batches import chat_template_of

    assert chat_template_of(model) == template
    (tmp_path / "eval.txt").write_text(Path(__file__).read_text())
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": str(i)}]}) + "\n"
                            for i in range(12)))
    # Without eval_data a foreign model has no held-out text: the dry run refuses it, before any job does.
    for verb in (["noise", str(model), "gammas=[0.01]"], ["finetune", str(model), f"task=file:{chat}", "steps=2"]):
        assert cli_main([*verb, "--out", str(tmp_path / "refused"), "--dry-run"]) == 2
        captured = capsys.readouterr()
        assert "qwen was not trained by overtrain, so there is no held-out split" in captured.out + captured.err
        assert "fix: pass eval_data=" in captured.out + captured.err
    assert not (tmp_path / "refused").exists()
    out, common = tmp_path / "out", [f"eval_data={tmp_path / 'eval.txt'}", "eval_tokens=256", "report=false", "--out", str(tmp_path / "out")]
    assert cli_main(["noise", str(model), "gammas=[0.01]", "seeds=2", "mode=relative", *common]) == 0
    import overtrain.probes.finetune as finetune_module

    templates_used, real_chat_segments = [], finetune_module.chat_segments

    def recording_chat_segments(messages, template, *args, **kwargs):
        templates_used.append(template)
        return real_chat_segments(messages, template, *args, **kwargs)

    monkeypatch.setattr(finetune_module, "chat_segments", recording_chat_segments)
    assert cli_main(["finetune", str(model), f"task=file:{chat}", "steps=2", "batch_size=2", *common]) == 0
    assert templates_used and set(templates_used) == {template}  # every chat was rendered with the folder's template
    with ResultStore(out / "results.sqlite") as store:
        rows = store.rows()
    assert {row.kind for row in rows} == {"noise", "finetune"}
    for row in rows:
        identity = row.provenance["checkpoint_identity"]
        assert identity["kind"] == "local" and identity["weights_sha256"] and row.spec["eval_data"].endswith("eval.txt")
    # The report on a foreign model's store: its rows have no token count, so they are tabled, never curved.
    assert cli_main(["report", str(out)]) == 0
    summary = (out / "report" / "summary.md").read_text()
    assert "Noise probe: checkpoints without a token count" in summary
    assert "Fine-tuning probe: checkpoints without a token count" in summary


@pytest.mark.parametrize("argv", [["noise", "CHECKPOINT", "--out="], ["theory", "--out", " ", "--dry-run"],
                                  ["sweep", "SPEC", "--out", "", "--dry-run"], ["bench", "CHECKPOINT", "--out="]])
def test_an_empty_out_is_refused_not_read_as_the_current_folder(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    spec = str(Path(__file__).resolve().parents[1] / "configs" / "demo" / "sweep_small.yaml")
    with pytest.raises(SystemExit) as exit_info:
        cli_main([spec if word == "SPEC" else word for word in argv])
    assert exit_info.value.code == 2
    assert "argument --out: is empty" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("verb", ["sweep", "pretrain"])
def test_an_empty_out_dir_setting_is_one_message(verb: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    spec = Path(__file__).resolve().parents[1] / "configs" / "demo" / ("sweep_small.yaml" if verb == "sweep" else "nano.yaml")
    for value, message in (("out_dir=''", "config key out_dir is empty"), ("out_dir=", "config key out_dir must be text, got None")):
        assert cli_main([verb, str(spec), value, "--dry-run"]) == 2
        assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_dry_run_refuses_what_the_jobs_would_refuse_only_after_loading(tmp_path: Path, checkpoint: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A sharpness group that matches no parameter of any model, a benchmark the harness does not know, a
    tokenizer path that does not exist or holds no tokenizer: each is one message from the dry run."""
    out = ["--out", str(tmp_path / "out"), "--dry-run"]
    assert cli_main(["sharpness", str(checkpoint), "groups=[nope]", *out]) == 2
    assert "'nope' is neither a group name" in capsys.readouterr().err
    assert cli_main(["sharpness", str(checkpoint), 'groups=[all,mlp,"*up_proj*",model.norm.weight]', *out]) == 0
    capsys.readouterr()
    assert cli_main(["sharpness", str(checkpoint), "groups=[all,*up_proj*]", *out]) == 2  # unquoted: a YAML alias, not a glob
    assert "quote the items that start with a YAML symbol" in capsys.readouterr().err
    assert cli_main(["sharpness", str(checkpoint), 'groups=[mlp,"*layers.7.*"]', *out]) == 2  # a glob, but this model has 2 layers
    assert f"sharpness group '*layers.7.*' matches no tensor of 1 model(s) of this sweep (e.g. {checkpoint})" in capsys.readouterr().err
    assert cli_main(["bench", str(checkpoint), "tasks=[arc_esy]", *out]) == 2
    assert "unknown lm-eval task(s): 'arc_esy' (did you mean 'arc_easy'" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    nano = str(Path(__file__).resolve().parents[1] / "configs" / "demo" / "nano.yaml")
    for tokenizer, message in ((tmp_path / "missing", "is not a folder that exists"), (tmp_path / "empty", "is a folder without tokenizer files")):
        assert cli_main(["pretrain", nano, f"data.tokenizer={tokenizer}", f"out_dir={tmp_path / 'run'}", "--dry-run"]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("")
    for eval_data, message in ((nano, "is not a supported type"), (tmp_path / "empty.txt", "is empty"),
                               (tmp_path / "empty", "no .txt")):
        assert cli_main(["noise", str(checkpoint), "gammas=[1]", f"eval_data={eval_data}", *out]) == 2
        assert "eval_data: " in (said := capsys.readouterr().err) and message in said, said
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_a_pretrain_config_given_to_sweep_is_named_as_such(capsys: pytest.CaptureFixture[str]) -> None:
    configs = Path(__file__).resolve().parents[1] / "configs" / "demo"
    assert cli_main(["sweep", str(configs / "nano.yaml"), "--dry-run"]) == 2
    assert "this is a pre-training config, not a sweep spec: it has model, data, train at the top" in capsys.readouterr().err
    assert cli_main(["sweep", str(configs / "sweep_small.yaml"), "train.lr=1e-3", "--dry-run"]) == 2
    assert "write them as pretrain.train.KEY=VALUE" in capsys.readouterr().err


def test_a_sweeps_pretraining_setting_is_named_as_the_user_wrote_it(capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(Path(__file__).resolve().parents[1] / "configs" / "demo" / "sweep_small.yaml")
    assert cli_main(["sweep", spec, "pretrain.train.batch_size=0", "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert "pretrain.train.batch_size=0 is invalid" in error and "fix: pretrain.train.batch_size: use" in error


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_the_dry_run_refuses_device_cuda_without_a_gpu(tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every such job would fail after loading its model; the dry run passed them (exit 0)."""
    assert cli_main(["finetune", str(checkpoint), "device=cuda", "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "1 job(s) ask for device=cuda but torch sees no GPU" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_probe_verbs_errors_name_its_keys_as_the_user_typed_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for verb, setting, named in (("bench", "limit=0", "limit=0 is invalid"), ("noise", "gammas=[-1]", "gammas holds -1.0")):
        assert cli_main([verb, str(tmp_path / "missing"), setting, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
        error = capsys.readouterr().err
        assert f"error: {named}" in error and "benchmarks." not in error and "noise." not in error


def test_keys_as_typed_leaves_other_sections_and_paths_alone() -> None:
    from overtrain.cli.probes import keys_as_typed
    from overtrain.errors import OvertrainError

    with pytest.raises(OvertrainError) as raised, keys_as_typed("noise"):
        raise OvertrainError("noise.gammas[0] and pretrain.noise.gammas differ for runs/noise.gammas, 'noise.txt' and noise.seeds.x",
                             "set noise.seeds=2")
    assert raised.value.problem == "gammas[0] and pretrain.noise.gammas differ for runs/noise.gammas, 'noise.txt' and seeds.x"
    assert raised.value.fix == "set seeds=2"
    with pytest.raises(OvertrainError) as raised, keys_as_typed("noise", ["foo.bar=1", "executor.workers=1"]):
        raise OvertrainError("unknown config key noise.foo", "remove noise.foo; noise.foobar and noise.executor stay")
    assert (raised.value.problem, raised.value.fix) == ("unknown config key foo", "remove foo; noise.foobar and noise.executor stay")


def test_a_key_below_a_value_is_refused_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before, train.lr.x=1 was refused as 'train.lr must be a number, got {'x': 1}', and gammas.x=1 as
    'gammas[0] must be a number': the dotted key made a mapping that later checks named as a bad value."""
    assert cli_main(["pretrain", "train.lr.x=1", "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert "config key train.lr holds a value, not a section of keys, so train.lr.x names nothing" in error
    assert cli_main(["noise", str(tmp_path), "gammas.x=1", "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "config key gammas holds a value, not a section of keys, so gammas.x names nothing" in capsys.readouterr().err
    assert cli_main(["finetune", str(tmp_path), "task=file:", "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "'file:' names nothing after the colon" in capsys.readouterr().err  # a bare prefix is still said as one


def test_an_argument_a_verb_cannot_place_is_refused_with_that_verbs_usage(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, usage in ((["tasks", "bogus"], "usage: overtrain tasks"), (["pretrain", "--bogus"], "usage: overtrain pretrain")):
        with pytest.raises(SystemExit) as exited:
            cli_main(argv)
        error = capsys.readouterr().err
        assert exited.value.code == 2 and usage in error and f"error: unrecognized arguments: {argv[1]}" in error
