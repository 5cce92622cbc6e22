"""Write documents FIRST..LAST (inclusive) of the embedded corpus to a text file, e.g. as `eval_data=`.

    python scripts/corpus_excerpt.py 200 204 runs/smol_eval.txt
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

from overtrain.data.corpus import iter_documents


def write_excerpt(first: int, last: int, out_file: Path) -> None:
    documents = itertools.islice(iter_documents(), first, last + 1)
    out_file.write_text("\n\n".join(documents))
    print(f"documents {first}-{last}: {out_file.stat().st_size:,} bytes -> {out_file}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    write_excerpt(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
