"""dit_eval: the fixed downstream protocol (latents, DiT, flow matching, sampling, Fréchet distance)."""
