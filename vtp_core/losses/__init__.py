"""The VTP objectives: reconstruction (L1 [+LPIPS]), CLIP InfoNCE, DINO + iBOT + KoLeo."""
from vtp_core.losses.clip import clip_loss
from vtp_core.losses.rec import reconstruction_loss
from vtp_core.losses.ssl import DINOCenter, dino_loss, ibot_loss, koleo_loss

__all__ = ["clip_loss", "reconstruction_loss", "DINOCenter", "dino_loss", "ibot_loss", "koleo_loss"]
