"""dit_eval: the fixed downstream protocol (latents, DiT, flow matching, sampling, Fréchet distance).

Stage entry points (`run(cfg, ctx) -> metrics`, see docs/CONTRACTS.md):
  latents.run     encode the DiT training set (+ hflip) into shards, per-channel stats with a hash
  train.run       LightningDiT + flow matching + EMA, exact resume, writes dit.pt
  sample.run      Euler ODE sampler (shift, CFG interval), sharded and resumable by global index
  extractors.run  FID feature network (Fashion-MNIST CNN or TF-Inception TorchScript), checksummed
  refstats.run    reference mu/sigma of real images
  fid.run         gFID with its protocol and protocol hash
Building blocks: models (size registry), flow (path, timesteps, loss), flops (measured FLOPs),
frechet (stable Fréchet distance), bench (micro-benchmarks).
"""
