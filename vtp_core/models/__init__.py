"""The tokenizer's networks: ViT encoder + bottleneck, pixel decoder, text tower, heads, BPE."""
