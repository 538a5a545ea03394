"""Small real models the tests share."""
import torch

from segaudit.models import build_model


def tiny_unet(classes: int = 2):
    """A seeded 1-channel smp U-Net, encoder depth 3, decoder channels 16/8/4: fast at 32 px."""
    torch.manual_seed(0)
    return build_model("unet", in_channels=1, classes=classes, encoder_depth=3, decoder_channels=[16, 8, 4])
