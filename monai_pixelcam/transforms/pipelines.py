"""Training and evaluation transform chains for dataset items ``{"image", "mask", "cam", ...}``.

Shapes after the chain: image ``float32 3 x S x S`` in [0, 1], mask ``float32 1 x S x S`` in {0, 1},
cam ``float32 1 x S x S`` in [0, 1], with ``S`` the crop size (training) or the evaluation size.

Spatial transforms are MONAI dictionary transforms listing the image, mask and CAM keys together, so one
random draw (crop window, flips, quarter turns) moves all three alike; that is what keeps the stored CAM,
from which PixelCAM draws its pixel seeds, aligned with the augmented image. Colour and stain transforms
and noise touch the image only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    DeleteItemsd,
    EnsureTyped,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotate90d,
    RandSpatialCropd,
    ScaleIntensityRanged,
)

from monai.utils import look_up_option

from ..data.io import LoadHistologyd
from .dictionary import NetworkInputd, RandColorJitterd, RandHEDJitterd, RandStainAugmentd

__all__ = ["train_transforms", "eval_transforms"]

# stain augmentation by name: the transform on the image key (strengths in train_transforms' docstring)
_STAIN_AUGMENTS: dict[str, Callable[[str], Callable]] = {
    "hed": lambda key: RandHEDJitterd(keys=key, prob=0.5, sigma=0.05, bias=0.01),
    "macenko": lambda key: RandStainAugmentd(keys=key, prob=0.5),
}


def _check_size(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _load_and_resize(
    size: int,
    image_key: str,
    mask_key: str | None,
    cam_key: str | None,
    load: bool,
    cam_loader: Callable | None,
    stain_normalize: bool,
    default_mask_key: str = "mask",
) -> list[Callable]:
    """Load (image, mask), add the CAM, then the network's input definition (:class:`NetworkInputd`: optional
    stain normalisation, resize to ``size x size``, the mask and CAM along with the image).

    Without ``mask_key`` an item's ``mask`` entry (e.g. ``None`` for an image without annotation) is dropped:
    a chain that does not use masks must not hand ``None`` to the batch collation."""
    chain: list[Callable] = [] if mask_key else [DeleteItemsd(keys=default_mask_key)]
    if load:
        keys = [image_key] + ([mask_key] if mask_key else [])
        chain.append(LoadHistologyd(keys=keys, mask_keys=[mask_key] if mask_key else [], allow_missing_keys=True))
    if cam_loader is not None:
        chain.append(cam_loader)
    chain.append(
        NetworkInputd(
            keys=image_key, spatial_size=size, stain_normalize=stain_normalize,
            cam_keys=[cam_key] if cam_key else [], mask_keys=[mask_key] if mask_key else [],
        )
    )  # fmt: skip
    return chain


def train_transforms(
    image_size: int = 256,
    crop_size: int | None = 224,
    stain_augment: bool | str = True,
    color_augment: bool = True,
    with_cam: bool = False,
    with_mask: bool = True,
    *,
    load: bool = True,
    cam_loader: Callable | None = None,
    stain_normalize: bool = False,
    noise_prob: float = 0.1,
    smooth_prob: float = 0.1,
    image_key: str = "image",
    mask_key: str = "mask",
    cam_key: str = "cam",
) -> Compose:
    """Training chain: load, resize to ``image_size``, random ``crop_size`` crop, flips, quarter turns
    (one draw for image, mask and CAM), then stain and colour jitter, blur and noise on the image.

    Args:
        image_size: side of the square resize, before cropping (the paper: 256).
        crop_size: side of the random square crop (the paper: 224); None: no crop, the output is
            ``image_size``. Must not exceed ``image_size``.
        stain_augment: True or ``"hed"``: :class:`~monai_pixelcam.transforms.RandHEDJitterd` (Tellez;
            ``sigma=0.05``, ``bias=0.01``: the published "HED-light" bias of 0.05 changes an H&E tile
            by about 40/255 on average and tints the glass, 0.01 by about 10/255), probability 0.5;
            ``"macenko"``: :class:`~monai_pixelcam.transforms.RandStainAugmentd` (its defaults,
            about 7/255), probability 0.5; False: none.
        color_augment: add :class:`~monai_pixelcam.transforms.RandColorJitterd` (brightness, contrast,
            saturation 0.2, hue 0.04 turn, probability 0.8).
        with_cam: the items carry a CAM under ``cam_key`` (``1 x h x w`` float in [0, 1], any ``h x w``:
            it is resized with the image).
        with_mask: the items carry a mask under ``mask_key`` (a path, None for an empty mask, or a
            ``1 x H x W`` tensor).
        load: start with :class:`monai_pixelcam.data.io.LoadHistologyd` (MONAI's ``LoadImaged`` with
            ``PILReader(reverse_indexing=False)`` and the package's conversion rules: paths -> tensors; tensors
            pass through it unchanged); False when the items already hold tensors.
        cam_loader: dictionary transform that puts the CAM in the item (e.g. ``LoadStoredCAMd``), run
            right after loading.
        stain_normalize: Macenko-normalise the image to MONAI's reference stain first
            (:class:`~monai_pixelcam.transforms.MacenkoNormalized`); use the same setting for evaluation.
        noise_prob: probability of additive Gaussian noise (std drawn in [0, 0.02]).
        smooth_prob: probability of a Gaussian blur (sigma drawn in [0.25, 1.0] pixels).
        image_key, mask_key, cam_key: item keys.

    Returns:
        a :class:`monai.transforms.Compose`; ``set_random_state(seed)`` on it makes the chain reproducible.
    """
    image_size = _check_size(image_size, "image_size")
    if crop_size is not None and _check_size(crop_size, "crop_size") > image_size:
        raise ValueError(f"crop_size {crop_size} is larger than image_size {image_size}")
    stain = None
    if stain_augment not in (False, None):
        try:
            stain = look_up_option("hed" if stain_augment is True else stain_augment, _STAIN_AUGMENTS)
        except ValueError as e:
            raise ValueError(f"stain_augment must be a bool or one of {sorted(_STAIN_AUGMENTS)}: {e}") from None
    m_key = mask_key if with_mask else None
    c_key = cam_key if with_cam else None
    keys = [k for k in (image_key, m_key, c_key) if k]

    chain = _load_and_resize(image_size, image_key, m_key, c_key, load, cam_loader, stain_normalize, mask_key)
    if crop_size is not None:
        chain.append(RandSpatialCropd(keys=keys, roi_size=(crop_size, crop_size), random_size=False))
    chain += [
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandRotate90d(keys=keys, prob=0.5, max_k=3),
    ]
    if stain is not None:
        chain.append(stain(image_key))
    if color_augment:
        chain.append(
            RandColorJitterd(keys=image_key, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.04, prob=0.8)
        )
    if smooth_prob > 0:
        chain.append(
            RandGaussianSmoothd(keys=image_key, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), prob=smooth_prob)
        )
    if noise_prob > 0:
        chain += [
            RandGaussianNoised(keys=image_key, prob=noise_prob, std=0.02),
            # noise leaves [0, 1]; an identity rescale with clipping brings it back
            ScaleIntensityRanged(keys=image_key, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
        ]
    chain.append(EnsureTyped(keys=keys, dtype=torch.float32))
    return Compose(chain)


def eval_transforms(
    image_size: int = 224,
    crop_size: int | None = None,
    with_cam: bool = False,
    with_mask: bool = True,
    *,
    load: bool = True,
    cam_loader: Callable | None = None,
    stain_normalize: bool = False,
    image_key: str = "image",
    mask_key: str = "mask",
    cam_key: str = "cam",
) -> Compose:
    """Evaluation chain: load, then the network's input definition (:class:`NetworkInputd`: optional stain
    normalisation, resize to ``image_size``, bilinear image and CAM, nearest mask), optional centre crop. No
    randomness.

    Give ``image_size`` the training chain's ``image_size``, as the bundle does: the network then sees whole
    images at the scale its training crops were cut from. (The WSOL benchmarks' protocol, Choe et al. 2020,
    resizes test images to the crop size, ``eval_transforms(crop_size)``, which shows the network tissue
    ``image_size / crop_size`` times coarser than at training.) For a resize then centre crop, as
    ImageNet-style evaluation does, give ``crop_size`` too.

    Args:
        image_size: side of the square resize.
        crop_size: side of a centre crop after the resize; None: no crop.
        with_cam, with_mask, load, cam_loader, stain_normalize, image_key, mask_key, cam_key: as in
            :func:`train_transforms`.

    Returns:
        a :class:`monai.transforms.Compose`.
    """
    image_size = _check_size(image_size, "image_size")
    if crop_size is not None and _check_size(crop_size, "crop_size") > image_size:
        raise ValueError(f"crop_size {crop_size} is larger than image_size {image_size}")
    m_key = mask_key if with_mask else None
    c_key = cam_key if with_cam else None
    keys: Sequence[str] = [k for k in (image_key, m_key, c_key) if k]
    chain = _load_and_resize(image_size, image_key, m_key, c_key, load, cam_loader, stain_normalize, mask_key)
    if crop_size is not None:
        chain.append(CenterSpatialCropd(keys=keys, roi_size=(crop_size, crop_size)))
    chain.append(EnsureTyped(keys=keys, dtype=torch.float32))
    return Compose(chain)
