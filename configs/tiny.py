"""Tiny byte-level GPT for a 2-core CPU: the README's default run (a few minutes).

3 layers, width 128, context 128, batch 16 (2,048 bytes per step), 250 steps.
Learning rates were tuned with ``python benchmarks/tune_tiny.py`` (this config, seed 0,
final validation loss, powers of 2); see the comment on each optimizer.
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
            # Tuned: γ ∈ 2^-2…2^-8 → val 2.205, 1.954, 1.664, 1.520, 1.429, 1.399 (2^-7), 1.431.
            "scion": OptimizerConfig(
                learning_rate=2**-7,
                warmdown_fraction=0.3,
                embedding_radius=1.0,
                hidden_radius=3.0,
                head_radius=10.0,
            ),
            # Tuned (benchmarks/convergence.py, seed 0): γ ∈ 2^-6…2^-10 → val 1.384, 1.349 (2^-7),
            # 1.364, 1.502, 1.830. Same radii as scion.
            "unconstrained_scion": OptimizerConfig(learning_rate=2**-7, warmdown_fraction=0.3),
            # Tuned: lr ∈ 2^-6…2^-10 → val 1.868, 1.645, 1.554, 1.545 (2^-9), 1.669.
            "adamw": OptimizerConfig(learning_rate=2**-9, warmup_steps=20, warmdown_fraction=0.3),
            # Tuned (benchmarks/convergence.py, seed 0): lr ∈ 2^-4…2^-8 → val 1.535, 1.388,
            # 1.387 (2^-6), 1.457, 1.637.
            "muon": OptimizerConfig(learning_rate=2**-6, warmup_steps=20, warmdown_fraction=0.3),
        },
    )
