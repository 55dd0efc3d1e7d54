"""Tiny byte-level GPT for a 2-core CPU: the README's default run (a few minutes).

3 layers, width 128, context 128, batch 16 (2,048 bytes per step), 250 steps.
Each learning rate is the best power of 2 of a learning-rate sweep on this config with
``benchmarks/convergence.py`` (seed 0, final validation loss on 4 batches); the comment on each
optimizer gives its sweep.
"""

from lmo_optax.example.config import OptimizerConfig, TrainConfig
from lmo_optax.example.model import GPTConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        model=GPTConfig(context=128, width=128, depth=3, heads=4, activation="relu2"),
        batch_size=16,
        steps=250,
        eval_every=50,
        eval_batches=8,
        run="scion,adamw",  # what `lmo-optax train/compare` runs by default
        optimizers={
            # Constrained Scion, no warmup, linear warmdown over the last 30% (paper §6).
            # Sweep: γ ∈ 2^-5…2^-9 → val 1.508, 1.421, 1.389 (2^-7), 1.418, 1.558.
            "scion": OptimizerConfig(
                learning_rate=2**-7,
                warmdown_fraction=0.3,
                embedding_radius=1.0,
                hidden_radius=3.0,
                head_radius=10.0,
            ),
            # Sweep: γ ∈ 2^-6…2^-10 → val 1.384, 1.349 (2^-7), 1.363, 1.502, 1.830.
            # Same radii as scion.
            "unconstrained_scion": OptimizerConfig(learning_rate=2**-7, warmdown_fraction=0.3),
            # Sweep: lr ∈ 2^-7…2^-11 → val 1.648, 1.544, 1.533 (2^-9), 1.663, 1.875.
            "adamw": OptimizerConfig(learning_rate=2**-9, warmup_steps=20, warmdown_fraction=0.3),
            # Sweep: lr ∈ 2^-4…2^-8 → val 1.535, 1.388, 1.387 (2^-6), 1.457, 1.637.
            "muon": OptimizerConfig(learning_rate=2**-6, warmup_steps=20, warmdown_fraction=0.3),
        },
    )
