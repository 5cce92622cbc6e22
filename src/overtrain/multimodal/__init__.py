"""LLaVA-style multimodal tuning of language-model checkpoints (the paper's vision-language arm).

- :mod:`~overtrain.multimodal.scenes`: synthetic scenes with exact-answer questions and captions;
- :mod:`~overtrain.multimodal.datasets`: image sets (scenes, CIFAR-10 from the bigbench sdist), split by image;
- :mod:`~overtrain.multimodal.encoders`: frozen vision encoders and the feature cache;
- :mod:`~overtrain.multimodal.model`: projector, image tokens spliced into the prompt, saving and loading;
- :mod:`~overtrain.multimodal.tuning`: stage 1 (projector on captions), stage 2 (projector + LM on
  questions), and the ID (VQA, caption loss) and OOD (pre-training loss) read-outs.
"""
