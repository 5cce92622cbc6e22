"""Fine-tuning tasks: the offline tasks, the Hub tasks read from local files in their real schema, bad input."""

from __future__ import annotations

import importlib.util
import json
import lzma
import struct
import sys
import zlib
from pathlib import Path

import pytest

from overtrain.errors import OvertrainError
from overtrain.tasks import list_tasks, load_task, records
from overtrain.tasks.bible import read_sword_library
from overtrain.tasks.stdlib_code import functions_in_source
from overtrain.tasks.sword import osis_to_text
from overtrain.tasks.wordnet import LEXICOGRAPHER_CLASSES, parse_data_line

REPO = Path(__file__).resolve().parent.parent
OFFLINE_TASKS = ["python-code", "gsm-symbolic", "wordnet-class", "kjv-to-web"]
HUB_TASKS = ["gsm8k", "siqa", "starcoder-python", "mr", "rte", "trec"]
INSTRUCT_TASKS = ["natural_instructions", "topical_chat", "alpaca_eval"]  # tests/test_instruct.py
HUB_INSTRUCT_TASKS = ["hh-rlhf", "tulu-v2", "tulu-3"]


# ---------------------------------------------------------------- helpers that write real-schema files


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_ztext(folder: Path, testament: str, slots: list[str]) -> None:
    """A SWORD zText testament: one zlib block holding every slot, in the real index formats."""
    folder.mkdir(parents=True, exist_ok=True)
    data = "".join(slots).encode("utf-8")
    compressed = zlib.compress(data)
    (folder / f"{testament}.bzz").write_bytes(compressed)
    (folder / f"{testament}.bzs").write_bytes(struct.pack("<III", 0, len(compressed), len(data)))
    verse_index, offset = b"", 0
    for slot in slots:
        size = len(slot.encode("utf-8"))
        verse_index += struct.pack("<IIH", 0, offset if size else 0, size)
        offset += size
    (folder / f"{testament}.bzv").write_bytes(verse_index)


def bible_slots(verses: dict[tuple[str, int], list[str]]) -> list[str]:
    """Slots in SWORD order: module header, testament header, then per book an intro, per chapter a heading."""
    slots, previous_book = ["", '<milestone type="x-importer"/>'], None
    for (book, chapter), texts in verses.items():
        if book != previous_book:
            slots.append(f'<div osisID="{book}" sID="b{book}" type="book"/><title type="main">{book}</title>')
            previous_book = book
        slots.append(f'<chapter n="{chapter}" osisID="{book}.{chapter}" sID="{book}.{chapter}"/>')
        slots.extend(texts)
    return slots


def make_sword_library(root: Path) -> Path:
    library = root / "usr/share/sword"
    kjv = {
        ("Gen", 1): ['In the <w lemma="strong:H7225">beginning</w> God created the heaven.', "And the earth was void."],
        ("Gen", 2): ["Thus the heavens were finished.", "And on the seventh day God ended his work."],
        ("Exod", 1): ["Now these are the names."],
    }
    web = {
        ("Gen", 1): [
            'In the beginning<note placement="foot">Hebrew: bereshit</note>, God created the heavens.',
            "The earth was formless.",
        ],
        ("Gen", 2): ["The heavens were finished.", "On the seventh day God finished his work.", "Extra verse."],
        ("Exod", 1): ['<title type="x-section">Israel in Egypt</title>Now these are the names.'],
    }
    write_ztext(library / "modules/texts/ztext/engkjv2006eb", "ot", bible_slots(kjv))
    write_ztext(library / "modules/texts/ztext/engweb2015eb", "ot", bible_slots(web))
    return library


WORDNET_LINES = {
    "data.noun": [
        "  1 This software and database is being provided to you, the LICENSEE, by  \n",
        '02084071 05 n 01 dog 0 000 | a member of the genus Canis; "the dog barked all night"  \n',
        "02121620 05 n 01 cat 0 000 | feline mammal usually having thick soft fur  \n",
        "03791235 06 n 02 motor_vehicle 0 automotive_vehicle 0 000 | a self-propelled wheeled vehicle  \n",
    ],
    "data.verb": ["01835496 38 v 01 travel 0 000 | change location; move, travel, or proceed  \n"],
    "data.adj": [
        "00001740 00 a 01 able 0 000 | having the necessary means or skill  \n",
        "01380267 00 s 01 galore(ip) 0 000 | in great numbers  \n",
    ],
    "data.adv": ["00001740 02 r 01 barely 0 000 | only just  \n"],
}


def make_wordnet_dict(root: Path) -> Path:
    folder = root / "usr/share/wordnet"
    folder.mkdir(parents=True)
    for name, lines in WORDNET_LINES.items():
        (folder / name).write_text("".join(lines), encoding="utf-8")
    return folder


# ---------------------------------------------------------------- registry and bad input


def test_list_tasks_names_every_domain_and_paper_dataset():
    assert list_tasks() == OFFLINE_TASKS + INSTRUCT_TASKS + HUB_TASKS + HUB_INSTRUCT_TASKS


def test_unknown_task_lists_known_ones_and_suggests_the_closest():
    with pytest.raises(OvertrainError) as caught:
        load_task("wordnet-clas")
    message = str(caught.value)
    assert "unknown task 'wordnet-clas'" in message and "kjv-to-web" in message and "did you mean 'wordnet-class'" in message


@pytest.mark.parametrize("argument", ["max_train", "max_heldout"])
def test_zero_examples_requested_says_which_split_is_empty(argument):
    with pytest.raises(OvertrainError, match=rf"{argument}=0 leaves the .* split of task 'kjv-to-web' empty"):
        load_task("kjv-to-web", **{argument: 0})


def test_bad_max_chars_and_missing_data_path_are_explained(tmp_path):
    with pytest.raises(OvertrainError, match="max_chars"):
        load_task("kjv-to-web", max_chars=0)
    with pytest.raises(OvertrainError, match="does not exist"):
        load_task("wordnet-class", data_path=tmp_path / "nowhere")


def test_missing_shipped_data_file_says_how_to_rebuild(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "TASK_DATA_DIR", tmp_path)
    with pytest.raises(OvertrainError, match="build_task_data.py"):
        load_task("wordnet-class")


def test_every_example_too_long_gives_an_empty_split_error():
    with pytest.raises(OvertrainError, match="split is empty"):
        load_task("kjv-to-web", max_chars=16)


# ---------------------------------------------------------------- offline tasks


def test_wordnet_class_is_a_balanced_45_way_classification():
    splits = load_task("wordnet-class", max_train=200, max_heldout=90)
    assert (len(splits.train), len(splits.heldout)) == (200, 90)
    assert splits.metrics == ("loss", "accuracy")
    example = splits.heldout[0]
    assert len(example.choices) == 45 and example.completion == example.choices[example.label]
    assert example.prompt.startswith("Word: ") and example.prompt.endswith("\nCategory:")
    assert len({e.label for e in splits.heldout[:45]}) >= 40  # interleaved: a prefix covers (almost) every class


def test_heldout_is_fixed_by_the_data_and_the_seed_only_moves_train():
    first, second = (load_task("wordnet-class", seed=seed, max_train=50, max_heldout=30) for seed in (0, 1))
    assert first.heldout == second.heldout and first.train != second.train
    assert load_task("wordnet-class", seed=0, max_train=50, max_heldout=30) == first


def test_kjv_to_web_pairs_archaic_and_modern_verses_without_overlap():
    splits = load_task("kjv-to-web", max_train=100, max_heldout=50)
    example = splits.train[0]
    assert example.prompt.startswith("KJV: ") and example.prompt.endswith("\nModern:") and example.completion.startswith(" ")
    assert not {e.prompt for e in splits.train} & {e.prompt for e in splits.heldout}
    assert splits.metrics == ("loss",)


def test_python_code_excludes_tests_and_holds_out_whole_modules(tmp_path):
    body = 'def {name}(x):\n    """Return x plus {n}."""\n    return x + {n}\n\n'
    for index in range(40):
        (tmp_path / f"mod{index}.py").write_text(body.format(name=f"add{index}", n=index) * 2, encoding="utf-8")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "helper.py").write_text(body.format(name="in_tests", n=0), encoding="utf-8")
    (tmp_path / "test_things.py").write_text(body.format(name="in_test_module", n=0), encoding="utf-8")
    splits = load_task("python-code", data_path=tmp_path)
    texts = [example.text for example in splits.train + splits.heldout]
    assert len(texts) == 80 and not any("in_test" in text for text in texts)
    assert splits.heldout and not {e.prompt for e in splits.train} & {e.prompt for e in splits.heldout}
    assert splits.heldout[0].completion.startswith("    return x + ") and splits.heldout[0].prompt.endswith('."""\n')


def test_python_code_reads_the_real_stdlib_quickly():
    splits = load_task("python-code", max_train=5, max_heldout=5)
    assert len(splits.train) == len(splits.heldout) == 5
    assert all(e.prompt.lstrip().startswith(("def ", "async def ", "@")) for e in splits.heldout)


def test_functions_in_source_splits_docstring_from_body_and_dedents_methods():
    source = (
        'class A:\n    @staticmethod\n    def f(a):\n        """Doc."""\n        return a\n\n'
        '    def g(self):\n        """Only a doc."""\n        pass\n'
    )
    (example,) = functions_in_source(source)
    assert example.prompt == '@staticmethod\ndef f(a):\n    """Doc."""\n' and example.completion == "    return a\n"


def test_gsm_symbolic_answers_in_gsm8k_style_with_a_fixed_heldout():
    first = load_task("gsm-symbolic", seed=1, max_train=12, max_heldout=6)
    second = load_task("gsm-symbolic", seed=2, max_train=12, max_heldout=6)
    assert first.heldout == second.heldout and first.train != second.train
    example = first.train[0]
    assert example.prompt.startswith("Question: ") and example.prompt.endswith("\nAnswer:")
    assert "#### " in example.completion and "Do not include units" not in example.prompt
    assert not {e.prompt for e in first.train} & {e.prompt for e in first.heldout}


def test_gsm_symbolic_without_reasoning_gym_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(OvertrainError, match="pip install reasoning-gym"):
        load_task("gsm-symbolic", max_train=2, max_heldout=2)


# ---------------------------------------------------------------- readers and the build script


def test_wordnet_line_parsing_reads_class_word_and_gloss():
    synset = parse_data_line(WORDNET_LINES["data.adj"][1], "adj")
    assert (synset.key, LEXICOGRAPHER_CLASSES[synset.class_number], synset.word) == ("adj.01380267", "adj.all", "galore")
    assert parse_data_line(WORDNET_LINES["data.noun"][0], "noun") is None


def test_sword_reader_aligns_verses_and_skips_chapters_whose_versification_differs(tmp_path):
    pairs = read_sword_library(make_sword_library(tmp_path))
    assert [(p.book, p.chapter, p.verse) for p in pairs] == [("Gen", 1, 1), ("Gen", 1, 2), ("Exod", 1, 1)]
    assert pairs[0].kjv == "In the beginning God created the heaven."
    assert pairs[0].web == "In the beginning, God created the heavens."
    assert pairs[2].web == "Now these are the names."
    assert osis_to_text('Amen. <chapter eID="Rev.22"/> glossary text') == "Amen."


def _build_script():
    spec = importlib.util.spec_from_file_location("build_task_data", REPO / "scripts/build_task_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_script_is_idempotent_and_its_output_loads(tmp_path):
    root, out = tmp_path / "root", tmp_path / "out"
    make_wordnet_dict(root)
    make_sword_library(root)
    build = _build_script()
    assert build.main(["--from-root", str(root), "--out-dir", str(out)]) == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert "unchanged" in build.build_wordnet(root, out) and "unchanged" in build.build_bible(root, out)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    verses = lzma.decompress(before["kjv_web_verses.tsv.xz"]).decode().splitlines()
    assert verses[0].split("\t")[:3] == ["Gen", "1", "1"]
    with pytest.raises(OvertrainError, match="held-out split is empty"):  # 7 synsets: none hashes into held-out
        load_task("wordnet-class", data_path=out / "wordnet_glosses.tsv.xz")


# ---------------------------------------------------------------- the paper's Hub datasets, from local files


def test_hub_task_offline_without_data_path_says_to_pass_one():
    with pytest.raises(OvertrainError, match="data_path"):
        load_task("gsm8k", max_train=2)


def test_gsm8k_from_parquet_in_the_hub_layout(tmp_path):
    row = {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"}
    write_parquet(tmp_path / "main/train-00000-of-00001.parquet", [row] * 3)
    write_parquet(tmp_path / "main/test-00000-of-00001.parquet", [dict(row, question="Ann has 2 pens. How many?")])
    splits = load_task("gsm8k", data_path=tmp_path)
    assert splits.heldout[0].prompt == "Question: Ann has 2 pens. How many?\nAnswer:"
    assert splits.train[0].completion == " 3+4=7\n#### 7" and len(splits.train) == 3


def test_siqa_labels_are_the_strings_1_to_3(tmp_path):
    row = {
        "context": "Cameron threw a party.",
        "question": "How would Others feel?",
        "answerA": "happy",
        "answerB": "sad",
        "answerC": "bored",
        "label": "1",
    }
    write_jsonl(tmp_path / "train.jsonl", [row, dict(row, label="3\n")])
    write_jsonl(tmp_path / "validation.jsonl", [dict(row, context="Riley lost a game.", label="2")])
    splits = load_task("siqa", data_path=tmp_path)
    assert [e.label for e in splits.train] in ([0, 2], [2, 0])
    assert splits.heldout[0].choices == (" happy", " sad", " bored") and splits.heldout[0].completion == " sad"


def test_starcoder_python_holds_out_by_hash_and_cuts_long_files(tmp_path):
    rows = [
        {
            "max_stars_repo_path": f"pkg/mod{i}.py",
            "max_stars_repo_name": "a/b",
            "max_stars_count": 1,
            "id": str(i),
            "content": f"<reponame>a/b\nimport os\n\n\ndef f{i}():\n    return {i}\n" + "# pad\n" * 200,
        }
        for i in range(120)
    ]
    write_parquet(tmp_path / "python/train-00000-of-00001.parquet", rows)
    splits = load_task("starcoder-python", data_path=tmp_path, max_chars=200)
    assert splits.heldout and len(splits.train) + len(splits.heldout) == 120
    example = splits.train[0]
    assert example.prompt.startswith("# file: pkg/mod") and example.completion.startswith("import os")
    assert len(example.text) <= 200 and "<reponame>" not in example.completion


def test_mr_and_sst2_rows_classify_sentiment(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a gem", "label": 1}, {"text": "a mess", "label": 0}])
    write_jsonl(tmp_path / "test.jsonl", [{"sentence": "dull", "label": 0}])  # SST-2 field name works too
    splits = load_task("mr", data_path=tmp_path)
    assert splits.heldout[0].prompt == "Review: dull\nSentiment:" and splits.heldout[0].completion == " negative"


def test_rte_drops_hidden_test_labels_and_says_when_nothing_is_left(tmp_path):
    row = {"sentence1": "A cat sat.", "sentence2": "An animal sat.", "label": 0, "idx": 0}
    write_jsonl(tmp_path / "train.jsonl", [row, dict(row, label=1, idx=1)])
    write_jsonl(tmp_path / "validation.jsonl", [dict(row, label=-1)])  # as in GLUE's test split
    with pytest.raises(OvertrainError, match=r"validation split read from .*validation.jsonl has no usable rows"):
        load_task("rte", data_path=tmp_path)
    write_jsonl(tmp_path / "validation.jsonl", [dict(row, sentence1="A dog ran.")])
    assert load_task("rte", data_path=tmp_path).heldout[0].completion == " True"


def test_trec_coarse_labels_and_an_empty_split_file(tmp_path):
    write_parquet(tmp_path / "train.parquet", [{"text": "Who wrote Hamlet ?", "coarse_label": 3, "fine_label": 29}])
    (tmp_path / "test.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(OvertrainError, match=r"test split read from .*test.jsonl has no usable rows"):
        load_task("trec", data_path=tmp_path)
    write_jsonl(tmp_path / "test.jsonl", [{"text": "Where is Rome ?", "coarse_label": 4, "fine_label": 1}])
    splits = load_task("trec", data_path=tmp_path)
    assert splits.train[0].completion == " human" and splits.heldout[0].completion == " location"


def test_missing_split_file_and_wrong_schema_are_explained(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"premise": "x", "label": 0}])
    with pytest.raises(OvertrainError, match="no data file for the 'validation' split"):
        load_task("rte", data_path=tmp_path)
    write_jsonl(tmp_path / "validation.jsonl", [{"premise": "x", "label": 0}])
    with pytest.raises(OvertrainError, match="lacks the field 'sentence1'"):
        load_task("rte", data_path=tmp_path)


def test_a_single_arrow_file_is_split_80_20(tmp_path):
    import datasets

    rows = {
        "sentence1": [f"Premise {i}." for i in range(50)],
        "sentence2": ["Hypothesis."] * 50,
        "label": [i % 2 for i in range(50)],
        "idx": list(range(50)),
    }
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "rte_validation"))
    (arrow_file,) = (tmp_path / "rte_validation").glob("*.arrow")
    splits = load_task("rte", data_path=arrow_file)
    assert len(splits.train) + len(splits.heldout) == 50 and 3 <= len(splits.heldout) <= 20
    assert "80% train / 20% held out" in splits.description


def test_a_dataset_dict_saved_to_disk_loads_split_by_split(tmp_path):
    import datasets

    def rows(prefix: str, count: int) -> dict:
        return {"text": [f"{prefix} movie {i}" for i in range(count)], "label": [i % 2 for i in range(count)]}

    splits = {"train": datasets.Dataset.from_dict(rows("a", 6)), "test": datasets.Dataset.from_dict(rows("b", 4))}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path))  # train/ and test/: arrow + state.json + dataset_info.json
    loaded = load_task("mr", data_path=tmp_path)
    assert (len(loaded.train), len(loaded.heldout)) == (6, 4) and loaded.heldout[0].prompt.startswith("Review: b movie")


# ---------------------------------------------------------------- task=file:PATH, the user's own JSONL


def _prompt_rows(count: int) -> list[dict]:
    return [{"prompt": f"Q{i}: what is {i} plus one?\nA:", "completion": f" {i + 1}"} for i in range(count)]


def test_file_task_reads_three_formats_and_trains_on_the_right_text(tmp_path):
    rows = _prompt_rows(30) + [{"text": f"plain document number {i}"} for i in range(10)]
    rows += [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]} for i in range(10)]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    splits = load_task(f"file:{path}", seed=0)
    everything = splits.train + splits.heldout
    assert len(everything) == 50 and splits.train and splits.heldout
    plain = [ex for ex in everything if ex.completion.startswith("plain document")]
    assert plain and all(ex.prompt == "" for ex in plain)  # loss on every token
    chat = [ex for ex in everything if ex.messages is not None]
    assert len(chat) == 10 and all(ex.prompt.endswith("Assistant: ") and ex.completion.startswith("hello") for ex in chat)


def test_file_task_heldout_is_fixed_by_a_hash_of_each_record_not_the_file_order(tmp_path):
    rows = _prompt_rows(60)
    forward = load_task(f"file:{write_jsonl(tmp_path / 'a.jsonl', rows)}", seed=0)
    backward = load_task(f"file:{write_jsonl(tmp_path / 'b.jsonl', rows[::-1])}", seed=5)
    assert forward.heldout == backward.heldout
    assert set(forward.train) == set(backward.train) and not set(forward.train) & set(forward.heldout)
    assert load_task(f"file:{tmp_path / 'a.jsonl'}", seed=1).train != forward.train  # the seed shuffles train only


def test_a_tiny_file_still_holds_one_record_out(tmp_path):
    splits = load_task(f"file:{write_jsonl(tmp_path / 'two.jsonl', _prompt_rows(2))}")
    assert len(splits.train) == 1 and len(splits.heldout) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n', "line 2: not valid JSON"),
        ('{"question": "a", "answer": "b"}\n', "unknown record format with keys ['answer', 'question']"),
        ('{"messages": [{"role": "user", "content": "only a question"}]}\n', "no assistant turn"),
        ('{"messages": [{"role": "robot", "content": "x"}]}\n', "message 0 must be"),
        ('[1, 2]\n', "must be a JSON object"),
        ("\n\n", "holds no records"),
    ],
)
def test_bad_task_files_are_explained_with_the_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(OvertrainError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_task(f"file:{path}")


def test_missing_task_file_is_explained(tmp_path):
    with pytest.raises(OvertrainError, match="does not exist"):
        load_task(f"file:{tmp_path / 'nope.jsonl'}")
    with pytest.raises(OvertrainError, match="not a file"):
        load_task(f"file:{tmp_path}")
