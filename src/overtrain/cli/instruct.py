"""``overtrain alpaca-export CHECKPOINT --out FILE``: the 805 AlpacaEval instructions with a model's answers.

Writes ``[{"instruction", "output", "generator", "dataset"}]``, the file ``alpaca_eval --model_outputs FILE``
judges (the judge needs network and an API key; nothing here calls it). Answers are greedy, at most
``max_new_tokens`` tokens, with the checkpoint's chat template or the plain ``User:``/``Assistant:`` one.
Only ``argparse`` is imported at module level, so the parser can be built without loading the stage.
"""

from __future__ import annotations

import argparse

from overtrain.cli.arguments import path_argument

ALPACA_EXPORT_SUMMARY = "answer the 805 AlpacaEval instructions greedily and write them in alpaca_eval's model_outputs format"

ALPACA_EXPORT_HELP = """\
CHECKPOINT is an overtrain checkpoint folder, a run folder (its newest checkpoint), a Hugging Face model
folder or hf:ORG/NAME@REVISION. The
instructions are alpaca-eval==0.6.6's example/outputs.json (its sdist is downloaded once into the
overtrain cache; docs/instruction_tuning.md). Examples:
  overtrain alpaca-export runs/tuned/checkpoint --out answers.json
  overtrain alpaca-export runs/tuned/checkpoint --out first50.json --limit 50 --max-new-tokens 128
  alpaca_eval --model_outputs answers.json      # with network: the judge's win rate"""


def add_alpaca_export_parser(verbs, run_verb) -> None:
    """Register ``alpaca-export`` on the CLI's sub-parsers (``run_verb`` dispatches to :func:`command_alpaca_export`)."""
    parser = verbs.add_parser("alpaca-export", help=ALPACA_EXPORT_SUMMARY, description=ALPACA_EXPORT_SUMMARY + ".\n\n" + ALPACA_EXPORT_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="overtrain checkpoint or run folder, Hugging Face folder, or hf:ORG/NAME@REVISION")
    parser.add_argument("--out", type=path_argument, required=True, help="the JSON file to write (written whole or not at all)")
    parser.add_argument("--generator", default=None, help="the name in the 'generator' field (default: the checkpoint's folder name)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N instructions (default: all 805)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in tokens (default 256)")
    parser.add_argument("--max-len", type=int, default=1024, help="prompt + answer tokens at most; prompts are cut from the left (default 1024)")
    parser.add_argument("--batch-size", type=int, default=8, help="instructions answered together (memory only; default 8)")
    parser.set_defaults(function=run_verb)


def load_chat_model(reference: str):
    """(model, tokenizer, chat template or None) of an overtrain checkpoint (our model, its tokenizers.Tokenizer),
    a Hugging Face folder or ``hf:ORG/NAME@REV`` (transformers' model and tokenizer)."""
    from pathlib import Path

    from overtrain.checkpoints.folder import is_overtrain_checkpoint, load_model
    from overtrain.checkpoints.foreign import is_hf_model_folder, load_transformers_model, read_hf_config, safetensors_files
    from overtrain.checkpoints.hub import download_snapshot, is_hub_reference, parse_hub_reference
    from overtrain.data.tokenizer import load_tokenizer
    from overtrain.errors import OvertrainError
    from overtrain.probes.task_batches import chat_template_of

    folder = download_snapshot(parse_hub_reference(reference))[0] if is_hub_reference(reference) else Path(reference).expanduser()
    if is_overtrain_checkpoint(folder):
        model, _ = load_model(folder)
        return model.eval(), load_tokenizer(folder), chat_template_of(folder)
    if not is_hf_model_folder(folder):
        raise OvertrainError(f"{reference} is not a model folder (no config.json)", "pass a checkpoint folder, a Hugging Face folder or hf:ORG/NAME@REVISION")
    from transformers import AutoTokenizer

    safetensors_files(folder)  # refuses pickled weights before anything is loaded
    model = load_transformers_model(folder, read_hf_config(folder)).eval()
    return model, AutoTokenizer.from_pretrained(str(folder)), chat_template_of(folder)


def resolve_one_checkpoint(reference: str) -> str:
    """The one model ``reference`` names: a run folder stands for its newest checkpoint (as for ``overtrain
    noise``); a path that does not exist, or a ladder (one model per budget), is refused with the fix."""
    from pathlib import Path

    from overtrain.checkpoints.discovery import expand_checkpoints
    from overtrain.checkpoints.hub import is_hub_reference
    from overtrain.errors import OvertrainError

    if not is_hub_reference(reference) and not Path(reference).expanduser().exists():
        raise OvertrainError(f"checkpoint {reference} does not exist", "pass an existing checkpoint or run folder, a Hugging Face folder, or hf:ORG/NAME@REVISION")
    found = expand_checkpoints([reference])
    if len(found) > 1:
        raise OvertrainError(
            f"{reference} holds {len(found)} models ({', '.join(Path(str(ref)).name for ref in found[:3])}{' ...' if len(found) > 3 else ''}); "
            "alpaca-export answers with one",
            f"pass one of them, e.g. overtrain alpaca-export {found[-1]} --out answers.json",
        )
    return str(found[0])


def check_export_arguments(args: argparse.Namespace) -> None:
    """Every numeric flag and the output file, refused together before the model is loaded (minutes on a large one)."""
    from pathlib import Path

    from overtrain.atomic import ensure_writable_file
    from overtrain.errors import SettingProblems
    from overtrain.probes.instruct_readouts import collect_generation_problems

    problems = SettingProblems()
    problems.require(args.limit is None or args.limit >= 1, "--limit", args.limit, "a number of instructions >= 1, or no --limit for all 805")
    collect_generation_problems(problems, args.max_new_tokens, args.max_len, args.batch_size,
                                {"max_new_tokens": "--max-new-tokens", "max_len": "--max-len", "batch_size": "--batch-size"})
    problems.raise_if_any()
    ensure_writable_file(Path(args.out), "the answers file", "--out")


def command_alpaca_export(args: argparse.Namespace) -> int:
    """Answer, write ``--out``, print where and how many; returns 0."""
    from pathlib import Path

    from overtrain.probes.instruct_readouts import alpaca_eval_export

    check_export_arguments(args)
    model, tokenizer, template = load_chat_model(resolve_one_checkpoint(args.checkpoint))
    generator = args.generator or Path(args.checkpoint.rstrip("/")).name
    rows = alpaca_eval_export(model, tokenizer, Path(args.out), generator, limit=args.limit, max_new_tokens=args.max_new_tokens,
                              max_len=args.max_len, chat_template=template, batch_size=args.batch_size)
    empty = sum(not row["output"] for row in rows)
    print(f"wrote {len(rows)} answers ({empty} empty) by {generator!r} to {args.out}; judge with: alpaca_eval --model_outputs {args.out}")
    return 0
