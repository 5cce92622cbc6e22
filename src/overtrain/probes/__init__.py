"""Probes measure how sensitive a checkpoint is: Gaussian noise (:mod:`.noise`) and fine-tuning (:mod:`.finetune`)."""
