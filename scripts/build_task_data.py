#!/usr/bin/env python3
"""Build the prepared task data shipped in ``src/overtrain/task_data`` from Debian packages.

    python scripts/build_task_data.py                 # apt-get download + dpkg -x into a temp folder
    python scripts/build_task_data.py --from-root /   # use the installed packages (/usr/share/...)

Writes ``wordnet_glosses.tsv.xz`` (WordNet 3.0, package ``wordnet-base``; capped per class as the
``wordnet-class`` task uses it) and ``kjv_web_verses.tsv.xz`` (aligned KJV/WEB verses, packages
``sword-text-kjv`` and ``sword-text-web``). Idempotent: the output depends only on the packages' contents,
xz runs with fixed settings, and a file whose bytes would not change is left untouched.
"""

from __future__ import annotations

import argparse
import lzma
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from overtrain.atomic import atomic_write_bytes
from overtrain.tasks import bible, wordnet
from overtrain.tasks.records import TASK_DATA_DIR

PACKAGES = ("wordnet-base", "sword-text-kjv", "sword-text-web")
XZ_PRESET = 9 | lzma.PRESET_EXTREME


def unpack_packages(workdir: Path) -> Path:
    """Download the Debian packages (no install) and unpack them; returns the unpacked root."""
    try:
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=workdir, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise SystemExit(
            f"apt-get download {' '.join(PACKAGES)} failed ({error}); run `apt-get update` once, "
            "or unpack the packages yourself and pass --from-root."
        ) from error
    root = workdir / "root"
    for deb in sorted(workdir.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def write_if_changed(path: Path, text: str) -> bool:
    """xz-compress ``text`` to ``path`` unless the file already holds exactly these bytes."""
    data = lzma.compress(text.encode("utf-8"), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET)
    if path.is_file() and path.read_bytes() == data:
        return False
    atomic_write_bytes(path, data)
    path.chmod(0o644)  # the temporary file was private; shipped data is world-readable
    return True


def build_wordnet(root: Path, out_dir: Path) -> str:
    """The capped WordNet synsets (train and held-out candidates), sorted by synset id."""
    train, heldout = wordnet.capped_split(wordnet.read_wordnet_dict(root / "usr/share/wordnet"))
    shipped = sorted(train + heldout, key=lambda synset: synset.key)
    changed = write_if_changed(out_dir / wordnet.PREPARED_FILE, wordnet.synsets_to_tsv(shipped))
    counts = f"{len(shipped)} synsets ({len(train)} train, {len(heldout)} held-out)"
    return f"{wordnet.PREPARED_FILE}: {counts}{'' if changed else ', unchanged'}"


def build_bible(root: Path, out_dir: Path) -> str:
    """All aligned KJV/WEB verse pairs, in KJV order."""
    pairs = bible.read_sword_library(root / "usr/share/sword")
    changed = write_if_changed(out_dir / bible.PREPARED_FILE, bible.pairs_to_tsv(pairs))
    return f"{bible.PREPARED_FILE}: {len(pairs)} verse pairs{'' if changed else ', unchanged'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-root", type=Path, help="root holding usr/share/wordnet and usr/share/sword (e.g. /)")
    parser.add_argument("--out-dir", type=Path, default=TASK_DATA_DIR, help="where the .tsv.xz files go")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="overtrain-task-debs-") as workdir:
        root = args.from_root or unpack_packages(Path(workdir))
        for report in (build_wordnet(root, args.out_dir), build_bible(root, args.out_dir)):
            print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
