"""GPT-2-small shape (width 768, 12 layers, 12 heads, context 1024) on bytes, for a GPU/TPU.

With a byte vocabulary the embedding is tiny, so this is ~85M parameters (GPT-2's 124M counts a
50257-token embedding). Scion follows the paper's modded-nanogpt 124M run: constrained, tied
embedding/head with Sign(1/d_model) radius 3000, hidden Spectral radius 50, α = 0.1,
γ = 0.00036 with no warmup and a linear warmdown over the last 1450 of 5100 steps. The AdamW and
Muon settings are modded-nanogpt's usual ones; none of these were tuned on this byte corpus.
"""

from lmo_optax.example.config import OptimizerConfig, TrainConfig
from lmo_optax.example.model import GPTConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        model=GPTConfig(context=1024, width=768, depth=12, heads=12, activation="relu2", tied=True),
        batch_size=64,
        steps=5100,
        eval_every=250,
        eval_batches=16,
        log_every=10,
        checkpoint_every=500,
        run="scion,adamw",
        optimizers={
            "scion": OptimizerConfig(
                learning_rate=0.00036,
                warmdown_fraction=1450 / 5100,
                hidden_radius=50.0,
                head_radius=3000.0,
            ),
            "unconstrained_scion": OptimizerConfig(
                learning_rate=0.00036,
                warmdown_fraction=1450 / 5100,
                hidden_radius=50.0,
                head_radius=3000.0,
            ),
            "adamw": OptimizerConfig(
                learning_rate=6e-4, warmup_steps=250, warmdown_fraction=0.3, weight_decay=0.1
            ),
            "muon": OptimizerConfig(learning_rate=0.02, warmup_steps=0, warmdown_fraction=0.3),
        },
    )
