"""The paper's shallow-GPT width-sweep setting, scaled to a CPU.

The paper (examples/shallow-nanogpt of the reference code) trains 2-layer GPTs with head size
64 at widths 256…2048 on shakespeare_char, batch 32 × 1024, 122 steps, no warmup, decaying γ,
radii input 1 / hidden 3 / head 10, sweeping γ over 2^-1…2^-12. Here the data is the byte corpus
and the context is 256 so one run fits a CPU; set model.width and model.heads = width / 64 (and
optimizers.scion.learning_rate) from the command line to sweep.
"""

from lmo_optax.example.config import OptimizerConfig, TrainConfig
from lmo_optax.example.model import GPTConfig

WIDTH = 256


def get_config() -> TrainConfig:
    return TrainConfig(
        model=GPTConfig(
            context=256,
            width=WIDTH,
            depth=2,
            heads=WIDTH // 64,
            activation="gelu",
            positions="learned",
        ),
        batch_size=32,
        steps=122,
        eval_every=61,
        eval_batches=8,
        run="scion,adamw",
        optimizers={
            "scion": OptimizerConfig(
                learning_rate=2**-7,
                warmdown_fraction=1.0,
                embedding_radius=1.0,
                hidden_radius=3.0,
                head_radius=10.0,
            ),
            "unconstrained_scion": OptimizerConfig(learning_rate=2**-7, warmdown_fraction=1.0),
            "adamw": OptimizerConfig(learning_rate=2**-9, warmdown_fraction=1.0),
            "muon": OptimizerConfig(learning_rate=2**-6, warmdown_fraction=1.0),
        },
    )
