"""`train --augment`: AlexNet's data augmentation (Krizhevsky et al. 2012, section 4.1), adapted
to 28x28 grey images upscaled to 224, traced inside the jitted train step.

d2l names augmentation as the fourth of AlexNet's improvements over LeNet, but its code leaves
it out; so does `train` unless asked. The paper's three transformations, and what each
becomes here:
- Random 224x224 crops of the 256x256 image (translations of up to 32 pixels, 12.5%): the
  resized image is padded with MAX_SHIFT black pixels on every side and cropped back to 224 at
  a uniform random offset: a translation by -16..16 pixels, two of the original 28x28 pixels.
  Fashion-MNIST's items are centred with a margin of about two pixels, so the item stays in
  view and keeps its scale (a crop of a smaller window and a resize would change both).
- Horizontal reflections, with probability 1/2: a mirrored shirt, shoe or bag is the same class.
- "PCA lighting": each RGB pixel plus sum_i alpha_i lambda_i p_i, alpha_i ~ N(0, 0.1), along
  the colour covariance's eigenvectors p_i. With one grey channel the one component is the
  intensity itself, so the noise becomes a scaling of the image's intensity by 1 + alpha with
  alpha ~ N(0, BRIGHTNESS_SD = 0.1): brighter or darker, the black background staying black.
  No clipping, as in the paper.

Each output pixel is one input pixel, or that pixel times the scale: exact in any float dtype.
The random numbers come from the key given (the train step's own augmentation key), per image,
so they do not depend on how the batch is sharded over devices.
"""

from __future__ import annotations

MAX_SHIFT = 16  # pixels of the 224x224 image, each way: two pixels of the 28x28 original
BRIGHTNESS_SD = 0.1  # the paper's standard deviation of the lighting noise


def draw(key, batch: int):
    """Each image's (row shift, column shift, flip, intensity scale) for one batch."""
    import jax
    import jax.numpy as jnp

    k_shift, k_flip, k_scale = jax.random.split(key, 3)
    shifts = jax.random.randint(k_shift, (2, batch), -MAX_SHIFT, MAX_SHIFT + 1)
    flips = jax.random.bernoulli(k_flip, 0.5, (batch,))
    scales = 1.0 + BRIGHTNESS_SD * jax.random.normal(k_scale, (batch,), jnp.float32)
    return shifts[0], shifts[1], flips, scales


def apply(images, dy, dx, flip, scale):
    """Images (B, H, W, 1) mirrored left-right where `flip`, then translated by (dy, dx)
    pixels with black filling in, times `scale`: out[i, j] = scale * x'[i - dy, j - dx]."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    _, h, w, _ = images.shape
    x = jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)
    padded = jnp.pad(x, ((0, 0), (MAX_SHIFT, MAX_SHIFT), (MAX_SHIFT, MAX_SHIFT), (0, 0)))

    def crop(image, dy, dx):
        return lax.dynamic_slice(image, (MAX_SHIFT - dy, MAX_SHIFT - dx, 0), (h, w, 1))

    shifted = jax.vmap(crop)(padded, dy, dx)
    return shifted * scale[:, None, None, None].astype(images.dtype)


def augment(key, images):
    """`apply` with this batch's random draws from `key`."""
    return apply(images, *draw(key, images.shape[0]))
