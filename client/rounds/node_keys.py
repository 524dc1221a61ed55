"""The node-config key naming the factory's model folder, which `fedmeta client` sets and its ClientApp reads.

It has a module of its own because its reader (`client.rounds.package`) imports torch, and the factory's
supervising process, which only sets it, starts without torch."""

__all__ = ["MODEL_DIR_KEY"]

MODEL_DIR_KEY = "model-dir"
