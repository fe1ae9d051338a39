"""The registry and everything about model weights: loading, placement, speed profiles, LoRAs."""
