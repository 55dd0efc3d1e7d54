"""The training example: a byte-level GPT (Flax NNX) trained from the command line.

Nothing in the core library imports this package; it only uses the library's public API.
"""
