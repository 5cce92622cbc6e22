"""Theory (experiment 6): catastrophic overtraining in a two-layer linear network, as a simulator.

f(x) = W2 W1 x is trained by gradient flow from a small initialization on a linear target A_pre with a
geometric spectrum, so it learns A_pre's modes one at a time, largest first. Every snapshot (one per
pre-training time T) is then perturbed with Gaussian noise or fine-tuned on a misaligned target A_ft,
optionally regularized toward its pre-trained weights, and the pre-training loss after the change is
read as a function of T. Modules: config (settings), targets, dynamics, closed_form, sweeps,
finetuning, incremental, experiments, report, figures; the verb is overtrain.cli.theory and the
inflection finder is shared with the language-model analysis (overtrain.results.inflection).
"""

from overtrain.theory.config import TheoryConfig
from overtrain.theory.experiments import TheoryResults, check_claims, run_all

__all__ = ["TheoryConfig", "TheoryResults", "check_claims", "run_all"]
