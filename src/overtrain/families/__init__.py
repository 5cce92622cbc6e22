"""Checkpoint families: many checkpoints of one pre-training run, ordered by tokens seen.

- :mod:`registry`: the known public families (Pythia, OLMo, OLMo-2, Amber), their repositories and how a
  branch name maps to step and tokens;
- :mod:`listing`: the revisions of a Hub family as the Hub lists them (branches and their commit shas);
- :mod:`integrity`: which revisions serve another revision's weights, from LFS sha256 values, without
  downloading anything;
- :mod:`selection`: all, every k-th, log-spaced in tokens, or a named list;
- :mod:`local`: a folder of Hugging Face checkpoint folders, or a run or ladder of ours.
"""
