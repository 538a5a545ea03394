"""Architecture names segaudit builds (smp, MONAI, classifiers), and the lazily imported libraries that build them.

smp (through timm) and torchvision take seconds to import, so :func:`import_smp` and
:func:`import_torchvision_models` import them on first use, after patching torchvision for a CPU torch.
"""
from __future__ import annotations

from segaudit._compat import patch_torchvision
from segaudit.errors import SegauditError

# Our names -> smp class names. DPT is left out: smp builds it only on a timm ViT encoder ("tu-vit_..."),
# refusing resnet18 and every other CNN encoder, and ViT-sized models are too heavy for CPU audits.
SEGMENTATION_ARCHS: dict[str, str] = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "manet": "MAnet",
    "linknet": "Linknet",
    "fpn": "FPN",
    "pspnet": "PSPNet",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "pan": "PAN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
}
# Our names -> classes of monai.networks.nets, built 2-D (segaudit.models.monai_nets).
MONAI_ARCHS: dict[str, str] = {
    "monai.unet": "UNet",
    "monai.basicunet": "BasicUNet",
    "monai.attentionunet": "AttentionUnet",
    "monai.segresnet": "SegResNet",
    "monai.swinunetr": "SwinUNETR",
}
CLASSIFICATION_ARCHS: tuple[str, ...] = ("lenet", "resnet18", "densenet121", "inception_v3")
_ARCH_ALIASES = {"unet++": "unetplusplus", "deeplabv3+": "deeplabv3plus", "inceptionv3": "inception_v3",
                 "monai.basic_unet": "monai.basicunet", "monai.attention_unet": "monai.attentionunet",
                 "monai.seg_resnet": "monai.segresnet", "monai.swin_unetr": "monai.swinunetr"}
ARCH_BY_SMP_CLASS = {cls: arch for arch, cls in SEGMENTATION_ARCHS.items()}


def import_smp():
    """``segmentation_models_pytorch``, imported on first use."""
    patch_torchvision()
    import segmentation_models_pytorch

    return segmentation_models_pytorch


def import_torchvision_models():
    """``torchvision.models``, imported on first use."""
    patch_torchvision()
    import torchvision.models

    return torchvision.models


def available_archs() -> dict[str, list[str]]:
    """Architecture names by task.

    Returns:
        ``{"segmentation": [...], "classification": [...]}``; names are case-insensitive in
        :func:`build_model`.
    """
    return {"segmentation": [*SEGMENTATION_ARCHS, *MONAI_ARCHS], "classification": list(CLASSIFICATION_ARCHS)}


def canonical_arch(arch: str) -> str:
    """Our name for ``arch`` (case, ``-`` and aliases such as ``unet++`` folded); unknown names are refused."""
    if not isinstance(arch, str):
        raise SegauditError(f"model arch must be a name, got {arch!r}")
    name = arch.strip().lower().replace("-", "_")
    name = _ARCH_ALIASES.get(name, name)
    if name in SEGMENTATION_ARCHS or name in MONAI_ARCHS or name in CLASSIFICATION_ARCHS:
        return name
    if name.startswith("monai."):
        raise SegauditError(f"segaudit does not build MONAI's {arch.strip()[6:]!r}: it audits 2-D segmentation "
                            f"networks and builds these of MONAI's: {', '.join(MONAI_ARCHS)} (no 3-D-only network)")
    archs = available_archs()
    raise SegauditError(
        f"unknown model arch {arch!r}; available: segmentation: {', '.join(archs['segmentation'])}; "
        f"classification: {', '.join(archs['classification'])}"
    )


def task_of(arch: str) -> str:
    """``"segmentation"`` or ``"classification"`` for a canonical arch name."""
    return "segmentation" if arch in SEGMENTATION_ARCHS or arch in MONAI_ARCHS else "classification"


def first_line(error: BaseException) -> str:
    """The first line of a library's error message, for one-line SegauditErrors."""
    text = str(error).strip().strip("\"'")
    return text.splitlines()[0] if text else type(error).__name__
