"""A 3.3M-parameter byte-level GPT on the standard library's sources: ~10 minutes on 2 CPU cores.

4 layers, width 256, context 256, batch 16 (4,096 bytes per step), 350 steps (1.4M bytes, about
a ninth of the ~12 MB corpus, so no window is seen twice in expectation). The data are
``--data stdlib`` (``lmo_optax.example.corpus``): every ``.py`` file of the running Python's
standard library in sorted order, the last 10% held out for validation. The learning rates and
Scion's radii were tuned with ``benchmarks/stdlib_corpus.py`` (its sweep and results are in
``docs/benchmarks.md``).
"""

from lmo_optax.example.config import OptimizerConfig, TrainConfig
from lmo_optax.example.model import GPTConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        model=GPTConfig(context=256, width=256, depth=4, heads=4, activation="relu2"),
        data="stdlib",
        batch_size=16,
        steps=350,
        eval_every=25,
        eval_batches=8,
        run="scion,adamw",
        optimizers={
            "scion": OptimizerConfig(
                learning_rate=2**-7,
                warmdown_fraction=0.3,
                embedding_radius=1.0,
                hidden_radius=3.0,
                head_radius=10.0,
            ),
            "unconstrained_scion": OptimizerConfig(learning_rate=2**-7, warmdown_fraction=0.3),
            "adamw": OptimizerConfig(learning_rate=2**-9, warmup_steps=20, warmdown_fraction=0.3),
            "muon": OptimizerConfig(learning_rate=2**-6, warmup_steps=20, warmdown_fraction=0.3),
        },
    )
