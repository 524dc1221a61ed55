"""Node-config keys that `fedmeta client` sets for its ClientApp and that need no module of their own to read:
kept apart from their readers (`client.rounds.package` imports torch) so that the factory's supervising
process, which only sets them, starts without torch."""

__all__ = ["MODEL_DIR_KEY"]

MODEL_DIR_KEY = "model-dir"  # the node config entry naming the factory's model folder
