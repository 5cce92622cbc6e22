"""Assistant-only masking: TRL's SFTTrainer dataset preparation vs overtrain's chat_segments + encode_segments.

    pip install trl==1.16.0            # in a scratch environment; overtrain does not depend on it
    python scripts/compare_trl_masking.py MODEL_FOLDER [N_NATURAL_INSTRUCTIONS] [N_TOPICAL_CHAT]

MODEL_FOLDER is a transformers model folder whose tokenizer has a ChatML chat template (SmolLM2-135M's was
used for docs/instruction_tuning.md). The same chats (the first train chats of natural_instructions, single
turn, and topical_chat, multi-turn) are tokenized and masked both ways; the script prints how many have equal
input ids and equal labels position by position, and the CPU and wall time of each side. TRL needs
``{% generation %}`` markers for assistant-only loss, so the template is marked around what each assistant
turn adds (exactly the span overtrain trains).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

CHATML_TURN = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
MARKED_TURN = ("{% if message['role'] == 'assistant' %}{{'<|im_start|>assistant\n'}}{% generation %}{{message['content'] + '<|im_end|>' + '\n'}}"
               "{% endgeneration %}{% else %}" + CHATML_TURN + "{% endif %}")


def main(folder: Path, single_turn: int, multi_turn: int) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from overtrain.data.tokenizer import load_tokenizer
    from overtrain.probes.task_batches import chat_segments, chat_template_of, encode_segments, special_tokens_of
    from overtrain.tasks import load_task

    examples = list(load_task("natural_instructions", max_train=single_turn).train) + list(load_task("topical_chat", max_train=multi_turn).train)
    template = chat_template_of(folder)
    if template is None or CHATML_TURN not in template:
        raise SystemExit(f"{folder} has no ChatML chat template to mark")

    tokenizer, special = load_tokenizer(folder), special_tokens_of(folder)
    wall, cpu = time.perf_counter(), time.process_time()
    ours = []
    for example in examples:
        encoded = encode_segments(tokenizer, chat_segments(example.messages, template, special), None, 10**7)
        ours.append((encoded.input_ids, [-100] + encoded.target_ids))
    ours_wall, ours_cpu = time.perf_counter() - wall, time.process_time() - cpu

    hf_tokenizer = AutoTokenizer.from_pretrained(str(folder))
    hf_tokenizer.chat_template = template.replace(CHATML_TURN, MARKED_TURN)
    args = SFTConfig(output_dir="/tmp/trl_compare", assistant_only_loss=True, max_length=None, report_to=[], bf16=False, use_cpu=True)
    conversations = [{"messages": [{"role": role, "content": content} for role, content in example.messages]} for example in examples]
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(str(folder)), args=args,
                         train_dataset=datasets.Dataset.from_list(conversations[:1]), processing_class=hf_tokenizer)
    wall, cpu = time.perf_counter(), time.process_time()
    prepared = trainer._prepare_dataset(datasets.Dataset.from_list(conversations), hf_tokenizer, args, False, None, "train")
    trl_wall, trl_cpu = time.perf_counter() - wall, time.process_time() - cpu

    return {
        "chats": len(examples), "single_turn": single_turn, "multi_turn": multi_turn,
        "input_ids_equal": sum(row["input_ids"][:-1] == ids for (ids, _), row in zip(ours, prepared)),
        "labels_equal_position_by_position": sum(row["labels"] == labels for (_, labels), row in zip(ours, prepared)),
        "trained_tokens": sum(sum(label != -100 for label in row["labels"]) for row in prepared),
        "overtrain_cpu_s": round(ours_cpu, 2), "trl_cpu_s": round(trl_cpu, 2), "overtrain_wall_s": round(ours_wall, 2), "trl_wall_s": round(trl_wall, 2),
    }


if __name__ == "__main__":
    counts = [int(value) for value in sys.argv[2:4]] + [1000, 200][len(sys.argv[2:4]):]
    print(json.dumps(main(Path(sys.argv[1]), *counts), indent=1))
