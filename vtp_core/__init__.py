"""vtp_core: the VTP tokenizer (models, losses, data, trainers, probes) and the FLOPs convention.

Lowest layer of the suite: imports torch and timm only, never sweeps, cluster or analysis.
"""
