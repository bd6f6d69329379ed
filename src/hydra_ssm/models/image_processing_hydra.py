"""The image processor of the Hydra image models, saved next to them as preprocessor_config.json.

It is a transformers image processor (the PIL/NumPy backend), so
``AutoImageProcessor`` and ``pipeline("image-classification")`` load it from a
model directory. Per image:

1. channels: brought to ``num_channels`` (1: grayscale by the ITU-R 601-2 luma
   weights, as PIL's "L" mode; 3: RGB, a gray image repeated; an alpha channel
   is dropped), channels first;
2. resize to ``size`` when the image has another size (torch's antialiased
   interpolation, so any value range works; an image already at ``size`` is left
   untouched);
3. rescale by ``rescale_factor`` (when ``do_rescale``);
4. normalise per channel: ``(x - image_mean[c]) / image_std[c]`` (when ``do_normalize``).

The training command line builds one from its training images and normalises
its own data through it, so a saved model and its processor agree.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import ImageType, get_image_type
from transformers.processing_utils import ImagesKwargs

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2, the weights of PIL's RGB -> "L" conversion

# PIL's resampling codes (PILImageResampling.NEAREST, .BILINEAR, .BICUBIC compare equal to them), written
# as numbers so that this module imports without Pillow (the pipeline's image loading needs it, arrays do not)
NEAREST, BILINEAR, BICUBIC = 0, 2, 3
_TORCH_MODES = {NEAREST: "nearest", BILINEAR: "bilinear", BICUBIC: "bicubic"}


class HydraImageProcessorKwargs(ImagesKwargs, total=False):
    num_channels: int | None


class HydraImageProcessor(PilBackend):
    r"""Resize, rescale and normalise images for :class:`HydraForImageClassification`.

    Args:
        num_channels (int): 1 (grayscale) or 3 (RGB): channels of the model's ``pixel_values``.
        size (dict): ``{"height": H, "width": W}``, the model's ``image_size``.
        do_resize (bool), resample (PILImageResampling: NEAREST, BILINEAR or BICUBIC).
        do_rescale (bool), rescale_factor (float): raw pixel value -> ``value * rescale_factor``.
        do_normalize (bool), image_mean, image_std (one float, or one per channel).

    Inputs: PIL images, or arrays (H, W), (C, H, W) or (H, W, C) (numpy or torch), one or a list;
    a 4-D array (B, C, H, W) or (B, H, W, C) is a batch.
    Output: ``BatchFeature`` with ``pixel_values`` (B, num_channels, H, W), float32.
    """

    valid_kwargs = HydraImageProcessorKwargs
    model_input_names = ["pixel_values"]
    num_channels = 3
    do_resize = True
    size = {"height": 224, "width": 224}
    resample = BILINEAR
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = 0.5  # one value for every channel, or one per channel
    image_std = 0.5

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._check(self.num_channels, self.image_mean, self.image_std, self.resample)

    @staticmethod
    def _check(num_channels, image_mean, image_std, resample) -> None:
        if num_channels not in (1, 3):
            raise ValueError(f"HydraImageProcessor: num_channels must be 1 or 3, got {num_channels!r}")
        for name, values in (("image_mean", image_mean), ("image_std", image_std)):
            if values is not None and np.ndim(values) > 0 and len(values) != num_channels:
                raise ValueError(f"HydraImageProcessor: {name} needs one value, or one per channel "
                                 f"(num_channels={num_channels}), got {values!r}")
        if image_std is not None and np.any(np.asarray(image_std, dtype=np.float64) <= 0):
            raise ValueError(f"HydraImageProcessor: image_std must be positive, got {image_std!r}")
        if resample is not None and resample not in _TORCH_MODES:
            raise ValueError(f"HydraImageProcessor: resample must be NEAREST, BILINEAR or BICUBIC, got {resample!r}")

    def _validate_preprocess_kwargs(self, num_channels=None, image_mean=None, image_std=None, resample=None, **kwargs):
        super()._validate_preprocess_kwargs(image_mean=image_mean, image_std=image_std, resample=resample, **kwargs)
        self._check(num_channels, image_mean, image_std, resample)

    def _prepare_images_structure(self, images, expected_ndims: int = 3):
        """As transformers, plus: 2-D arrays (H, W) are grayscale images, alone or in a list."""
        def flat(image):
            return isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 2

        if flat(images):
            return [images]
        if isinstance(images, (list, tuple)) and any(flat(image) for image in images):
            return list(images)
        return super()._prepare_images_structure(images, expected_ndims=expected_ndims)

    def process_image(self, image, num_channels: int | None = None, input_data_format=None, **kwargs) -> np.ndarray:
        """One raw image -> (num_channels, H, W), dtype kept (uint8 stays uint8)."""
        num_channels = self.num_channels if num_channels is None else num_channels
        if get_image_type(image) == ImageType.PIL:  # PIL converts its own modes
            image = image.convert("L" if num_channels == 1 else "RGB")
        image = super().process_image(image, do_convert_rgb=False, input_data_format=input_data_format)
        channels = image.shape[0]
        if channels == 4:  # RGBA: drop alpha
            image, channels = image[:3], 3
        if channels == num_channels:
            return image
        if channels == 3 and num_channels == 1:
            gray = np.tensordot(np.asarray(LUMA_WEIGHTS), image.astype(np.float64), axes=1)[None]
            if np.issubdtype(image.dtype, np.integer):
                gray = np.rint(gray)  # integer images stay integer, as PIL's "L"
            return gray.astype(image.dtype)
        if channels == 1 and num_channels == 3:
            return np.repeat(image, 3, axis=0)
        raise ValueError(f"HydraImageProcessor: cannot make {num_channels} channel(s) from an image with {channels} "
                         f"(shape {tuple(image.shape)}); pass input_data_format when the layout is ambiguous")

    def resize(self, image: np.ndarray, size, resample=None, **kwargs) -> np.ndarray:
        """(C, H, W) -> (C, size.height, size.width); unchanged (same array) when already that size."""
        target = (size.height, size.width)
        if tuple(image.shape[-2:]) == target:
            return image
        mode = _TORCH_MODES[resample if resample is not None else self.resample]
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64))[None]
        out = torch.nn.functional.interpolate(x, size=target, mode=mode, antialias=mode != "nearest",
                                              **({} if mode == "nearest" else {"align_corners": False}))
        return out[0].numpy()


__all__ = ["HydraImageProcessor"]
