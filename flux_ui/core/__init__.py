"""The bottom layer: settings, variants, errors, seeds, memory policies. Imports nothing of flux_ui."""
