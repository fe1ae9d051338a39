"""LoRAs: the library of files, adapters, merging into compiled/float8 weights, control LoRAs."""
