"""d2l's `Resize(224)` as torchvision runs it on a uint8 PIL image: Pillow's bilinear resize.

The reference for our resize (tests) and d2l's loader (compare-torch); needs Pillow, not torch.
"""

import numpy as np

from ..config import IMAGE_SIZE


def pillow_resize(images: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """torchvision's Resize(size) on uint8 PIL images: Pillow's bilinear resample, uint8."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
                     for im in images])
