"""Per-step schedules (pure functions of step): LR warmup+cosine, teacher temperature, EMA momentum."""
from __future__ import annotations

import math

from vtp_core.config import TokenizerConfig, warmup_steps


def lr_at(cfg: TokenizerConfig, step: int) -> float:
    """Linear warm-up over `config.warmup_steps(cfg)` = min(warmup_steps, round(warmup_fraction · steps))
    steps, reaching the peak `lr` at its last step, then cosine to 0 at `steps`. Every run reaches the
    peak: the warm-up is at most a fraction < 1 of its steps."""
    warm = warmup_steps(cfg)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    span = max(cfg.steps - warm, 1)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(step - warm, span) / span))


def teacher_temp_at(cfg: TokenizerConfig, step: int) -> float:
    """Linear warmup teacher_temp -> teacher_temp_final over teacher_temp_warmup·steps, then constant."""
    warm = max(1, round(cfg.teacher_temp_warmup * cfg.steps))
    return cfg.teacher_temp + (cfg.teacher_temp_final - cfg.teacher_temp) * min(step / warm, 1.0)


def ema_momentum_at(cfg: TokenizerConfig, step: int) -> float:
    """Cosine from ema_momentum to ema_momentum_final over the run (DINOv2: 0.992 -> 1)."""
    frac = min(step / max(cfg.steps, 1), 1.0)
    return cfg.ema_momentum_final - (cfg.ema_momentum_final - cfg.ema_momentum) * (math.cos(math.pi * frac) + 1) / 2
