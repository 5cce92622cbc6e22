"""Tune one checkpoint on natural_instructions and read out ID loss, OOD loss and the instruction proxies before and after.

    python scripts/instruction_tuning_run.py CHECKPOINT OUT_FOLDER LR [pack]

Writes OUT_FOLDER/result.json and OUT_FOLDER/alpaca_eval_outputs.json (docs/instruction_tuning.md, "A real run")."""
import json, sys, time
from pathlib import Path

import torch

from overtrain.data.tokenizer import load_tokenizer
from overtrain.probes.finetune import EncodedTask, FinetuneConfig, finetune_in_place
from overtrain.probes.instruct_readouts import SentenceEncoder, alpaca_eval_export, answer_relevance, heldout_instructions, hhh_alignment_accuracy
from overtrain.probes.target import load_probe_target
from overtrain.probes.task_batches import chat_template_of

checkpoint, out, lr = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
pack = len(sys.argv) > 4 and sys.argv[4] == "pack"
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(2)
log = lambda *a: print(time.strftime("%H:%M:%S"), *a, flush=True)
config = FinetuneConfig(task="natural_instructions", lr=lr, steps=300, batch_size=16, max_len=800, max_train=20000, max_heldout=400, pack=pack)
target = load_probe_target(checkpoint, 65536, dtype="fp32", log=log)
tokenizer = load_tokenizer(checkpoint)
template = chat_template_of(checkpoint)
t = time.time(); task = EncodedTask(target, config); log(f"task encoded in {time.time() - t:.1f}s: {len(task.train)} train rows, {len(task.heldout)} held out")
encoder = SentenceEncoder()
instructions = heldout_instructions("alpaca_eval", 64)
ni_instructions = heldout_instructions("natural_instructions", 64)

def readouts(tag):
    t = time.time()
    result = {"id_loss": task.measure(target.model, 32, "fp32").loss, "ood_loss": target.pretraining_loss().loss}
    result["hhh"] = hhh_alignment_accuracy(target.model, tokenizer, max_len=800).__dict__
    rel, answers = answer_relevance(target.model, tokenizer, instructions, encoder=encoder, max_new_tokens=48, max_len=800, chat_template=template)
    rel_ni, answers_ni = answer_relevance(target.model, tokenizer, ni_instructions, encoder=encoder, max_new_tokens=48, max_len=800, chat_template=template)
    result["relevance_alpaca_heldout"], result["relevance_ni_heldout"] = rel.__dict__, rel_ni.__dict__
    result["sample_answers"] = [{"instruction": i[:200], "answer": a} for i, a in list(zip(ni_instructions, answers_ni))[:3] + list(zip(instructions, answers))[:3]]
    log(tag, f"({time.time() - t:.0f}s)", json.dumps({k: v for k, v in result.items() if k != "sample_answers"}))
    return result

before = readouts("before")
t = time.time(); cpu = time.process_time()
counts = finetune_in_place(target.model, task, config, "fp32")
train_s, train_cpu = time.time() - t, time.process_time() - cpu
log(f"tuned: {config.steps} steps in {train_s:.0f}s wall, {train_cpu:.0f}s CPU; {counts.task} completion tokens")
after = readouts("after")
t = time.time()
rows = alpaca_eval_export(target.model, tokenizer, out / "alpaca_eval_outputs.json", f"nano-4M-ni-lr{lr:g}", max_new_tokens=64, max_len=800, chat_template=template, batch_size=16)
log(f"exported {len(rows)} answers in {time.time() - t:.0f}s; empty: {sum(not r['output'] for r in rows)}")
json.dump({"checkpoint": str(checkpoint), "config": config.__dict__, "train_wall_s": train_s, "train_cpu_s": train_cpu, "train_tokens": counts.task,
           "train_rows": len(task.train), "before": before, "after": after}, open(out / "result.json", "w"), indent=1)
