"""lmo-optax: training with norm-constrained linear minimization oracles (Scion, uSCG, SCG).

Pethick et al., "Training Deep Learning Models with Norm-Constrained LMOs", ICML 2025.
"""

from lmo_optax.diagnostics import average_from_state, diagnostics, diagnostics_table
from lmo_optax.inference import infer_rules
from lmo_optax.newton_schulz import (
    COEFFICIENT_TABLES,
    CoefficientTable,
    coefficient_table,
    orthogonalize,
)
from lmo_optax.norms import (
    RMS,
    Auto,
    ColNorm,
    Linf,
    MatrixNorm,
    Norm,
    RowNorm,
    Sign,
    Spectral,
    SpectralConv,
)
from lmo_optax.optimizers import scion, unconstrained_scion
from lmo_optax.rules import (
    PRESETS,
    Assignment,
    Rule,
    assign,
    auto_rules,
    cnn_rules,
    gpt_rules,
    gpt_tied_rules,
    init_on_ball,
    mlp_rules,
    print_rules,
    rules_table,
    vit_rules,
)
from lmo_optax.transforms import (
    AverageGradientsState,
    ScionStepState,
    average_gradients,
    scale_by_lmo,
    scion_step,
)

__version__ = "0.1.0"

__all__ = [
    "COEFFICIENT_TABLES",
    "PRESETS",
    "RMS",
    "Assignment",
    "Auto",
    "AverageGradientsState",
    "CoefficientTable",
    "ColNorm",
    "Linf",
    "MatrixNorm",
    "Norm",
    "RowNorm",
    "Rule",
    "ScionStepState",
    "Sign",
    "Spectral",
    "SpectralConv",
    "assign",
    "auto_rules",
    "average_from_state",
    "average_gradients",
    "cnn_rules",
    "coefficient_table",
    "diagnostics",
    "diagnostics_table",
    "gpt_rules",
    "gpt_tied_rules",
    "infer_rules",
    "init_on_ball",
    "mlp_rules",
    "orthogonalize",
    "print_rules",
    "rules_table",
    "scale_by_lmo",
    "scion",
    "scion_step",
    "unconstrained_scion",
    "vit_rules",
]
