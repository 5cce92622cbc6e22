"""Synthetic scenes: coloured shapes on a 3x3 grid, with a caption and questions that have one exact answer.

A scene is a pure function of ``(seed, split, index)``: shapes (circle, square, triangle), colours (red,
green, blue, yellow), positions (cells of a 3x3 grid, named "top left" ... "bottom right") and a count
of 1-4 objects. The held-out split draws from its own random stream and drops any scene whose layout also
occurs in the train split, so no held-out question is answerable by memorising a train image.

Questions (each asked only when its answer is unique, answers are one or two words):

- ``count``: "how many shapes are there?" -> "3"
- ``colour``: "what colour is the circle?" (the only circle) -> "red"
- ``shape``: "what shape is green?" (the only green object) -> "square"
- ``where``: "where is the blue triangle?" (unique) -> "top left"
- ``count_colour``: "how many red shapes are there?" -> "2"
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
MAX_OBJECTS = 4
SCENE_PIXELS = 112
"""Side of a scene image in pixels (the encoder resizes it to its own input size)."""
BACKGROUND = (235, 235, 235)
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
SPLIT_STREAMS = {"train": 101, "heldout": 202}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    cell: int
    """Grid cell 0..8, row-major from the top left."""

    @property
    def where(self) -> str:
        """``top left`` ... ``bottom right``; the center cell is ``center``."""
        row, column = ROWS[self.cell // 3], COLUMNS[self.cell % 3]
        return "center" if (row, column) == ("middle", "center") else f"{row} {column}"


@dataclass(frozen=True)
class Question:
    kind: str
    """count | colour | shape | where | count_colour."""
    text: str
    answer: str


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]

    @property
    def layout(self) -> tuple[tuple[str, str, int], ...]:
        """What the image shows, as a hashable value (two scenes with equal layouts are the same image)."""
        return tuple(sorted((o.shape, o.colour, o.cell) for o in self.objects))

    def image(self) -> Image.Image:
        """The scene drawn on a SCENE_PIXELS square, RGB."""
        image = Image.new("RGB", (SCENE_PIXELS, SCENE_PIXELS), BACKGROUND)
        draw = ImageDraw.Draw(image)
        cell = SCENE_PIXELS / 3
        margin = cell * 0.18
        for obj in self.objects:
            x0, y0 = (obj.cell % 3) * cell + margin, (obj.cell // 3) * cell + margin
            x1, y1 = x0 + cell - 2 * margin, y0 + cell - 2 * margin
            fill = COLOURS[obj.colour]
            if obj.shape == "circle":
                draw.ellipse((x0, y0, x1, y1), fill=fill)
            elif obj.shape == "square":
                draw.rectangle((x0, y0, x1, y1), fill=fill)
            else:
                draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        return image

    def caption(self) -> str:
        """Objects in reading order: ``a red circle at the top left and a blue square at the center``."""
        parts = [f"a {o.colour} {o.shape} {'at the ' + o.where}" for o in sorted(self.objects, key=lambda o: o.cell)]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]

    def questions(self) -> list[Question]:
        """Every question about this scene whose answer is unique (see the module docstring)."""
        found = [Question("count", "how many shapes are there?", str(len(self.objects)))]
        for shape in SHAPES:
            matching = [o for o in self.objects if o.shape == shape]
            if len(matching) == 1:
                found.append(Question("colour", f"what colour is the {shape}?", matching[0].colour))
        for colour in COLOURS:
            matching = [o for o in self.objects if o.colour == colour]
            if len(matching) == 1:
                found.append(Question("shape", f"what shape is {colour}?", matching[0].shape))
            if matching:
                found.append(Question("count_colour", f"how many {colour} shapes are there?", str(len(matching))))
        for obj in self.objects:
            if sum(o.shape == obj.shape and o.colour == obj.colour for o in self.objects) == 1:
                found.append(Question("where", f"where is the {obj.colour} {obj.shape}?", obj.where))
        return found


def random_scene(rng: np.random.Generator) -> Scene:
    """1-4 objects in distinct cells, shape and colour drawn uniformly."""
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    cells = rng.choice(9, size=count, replace=False)
    colours = list(COLOURS)
    return Scene(tuple(SceneObject(SHAPES[int(rng.integers(len(SHAPES)))], colours[int(rng.integers(len(colours)))], int(cell)) for cell in cells))


def generate_scenes(count: int, seed: int, split: str, exclude: set | None = None) -> list[Scene]:
    """``count`` distinct scenes of ``split`` (train | heldout), a pure function of (seed, split); scenes whose
    layout is in ``exclude`` (or repeats one already drawn) are skipped."""
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split]])
    seen = set(exclude or ())
    scenes: list[Scene] = []
    while len(scenes) < count:
        scene = random_scene(rng)
        if scene.layout not in seen:
            seen.add(scene.layout)
            scenes.append(scene)
    return scenes


def scene_splits(train: int, heldout: int, seed: int) -> tuple[list[Scene], list[Scene]]:
    """Train scenes and held-out scenes, the held-out ones disjoint in layout from the train ones."""
    train_scenes = generate_scenes(train, seed, "train")
    return train_scenes, generate_scenes(heldout, seed, "heldout", exclude={s.layout for s in train_scenes})
