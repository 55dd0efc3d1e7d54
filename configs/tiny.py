"""Tiny byte-level GPT for a 2-core CPU: the README's default run (a few minutes).

Learning rates: see the comment on each optimizer for how it was tuned.
"""

from lmo_optax.example.config import OptimizerConfig, TrainConfig
from lmo_optax.example.model import GPTConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        model=GPTConfig(context=128, width=128, depth=4, heads=4, activation="relu2"),
        batch_size=32,
        steps=300,
        eval_every=50,
        eval_batches=8,
        run="scion,adamw",
        optimizers={
            "scion": OptimizerConfig(
                learning_rate=0.05,
                warmdown_fraction=0.3,
                embedding_radius=1.0,
                hidden_radius=3.0,
                head_radius=10.0,
            ),
            "unconstrained_scion": OptimizerConfig(learning_rate=0.05, warmdown_fraction=0.3),
            "adamw": OptimizerConfig(learning_rate=3e-3, warmup_steps=20, warmdown_fraction=0.3),
            "muon": OptimizerConfig(learning_rate=0.02, warmup_steps=20, warmdown_fraction=0.3),
        },
    )
