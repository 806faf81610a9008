"""Denoisers for denoised smoothing (Salman et al. 2020): the architecture, its checkpoint format
``ancer-denoiser/1``, loading, and the base classifier ``classifier(denoiser(z, theta))``.

A denoiser maps a noisy batch ``z`` ``(B, C, H, W)`` and its noise-level map ``(B, C, H, W)`` --
the noise standard deviation of every pixel, ``theta`` for l2 and ``theta / sqrt(3)`` for l1, so
the map means the same for both norms -- to the denoised batch in ``[0, 1]``. One denoiser serves
a fixed sigma, isotropic thetas and anisotropic (ANCER) thetas alike. The smoothing toolkit adds
the noise itself; the denoiser only sees the noisy batch and the map, so the certificate is that
of the composed base classifier, unchanged.

One job per module: :mod:`.architecture` (the DnCNN, its sizes, the noise level of a theta),
:mod:`.files` (the ``ancer-denoiser/1`` format), :mod:`.loading` (any denoiser for inference,
and its record), :mod:`.classifier` (the denoised base classifier).
"""

from ancer_cli.models.denoisers.architecture import (
    DEFAULT_DENOISER_SIZE,
    DENOISER_SIZES,
    DnCNN,
    denoiser_size,
    noise_level,
)
from ancer_cli.models.denoisers.classifier import (
    DenoisedClassifier,
    find_denoised,
    inputs_per_theta,
)
from ancer_cli.models.denoisers.files import (
    DENOISER_FORMAT,
    DENOISER_KEYS,
    read_denoiser,
    save_denoiser,
)
from ancer_cli.models.denoisers.loading import (
    LoadedDenoiser,
    build_denoiser,
    denoiser_record,
    load_denoiser,
)

__all__ = [
    "DEFAULT_DENOISER_SIZE",
    "DENOISER_FORMAT",
    "DENOISER_KEYS",
    "DENOISER_SIZES",
    "DenoisedClassifier",
    "DnCNN",
    "LoadedDenoiser",
    "build_denoiser",
    "denoiser_record",
    "denoiser_size",
    "find_denoised",
    "inputs_per_theta",
    "load_denoiser",
    "noise_level",
    "read_denoiser",
    "save_denoiser",
]
