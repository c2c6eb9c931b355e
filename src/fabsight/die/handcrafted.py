"""Hand-crafted texture and shape descriptors for the hybrid classifier (Applied Materials talk).

Deep features say *what* a defect looks like in ImageNet/DINO terms; grey-level
co-occurrence statistics (GLCM) describe its texture at a few pixel distances, and Zernike
moments its rotation-invariant shape. Fused with the deep embedding they help on small,
texture-defined classes (pin holes vs spurious copper, cracks vs fray).
"""

from __future__ import annotations

import numpy as np

GLCM_DISTANCES = (1, 2, 4)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
GLCM_LEVELS = 32
ZERNIKE_SIZE = 64
ZERNIKE_DEGREE = 8
VERSION = "handcrafted-v1"  # part of the cache key: bump when the descriptors change


def _grey(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        return (image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
    return image


def glcm_features(image: np.ndarray) -> np.ndarray:
    """Six GLCM properties at three distances, averaged over four angles (18 values)."""
    import cv2
    from skimage.feature import graycomatrix, graycoprops

    g = cv2.resize(_grey(image), (ZERNIKE_SIZE * 2, ZERNIKE_SIZE * 2), interpolation=cv2.INTER_AREA)
    q = (g.astype(np.uint16) * GLCM_LEVELS // 256).astype(np.uint8)
    m = graycomatrix(q, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS, symmetric=True, normed=True)
    return np.concatenate([graycoprops(m, p).mean(axis=1) for p in GLCM_PROPS]).astype(np.float32)


def zernike_features(image: np.ndarray) -> np.ndarray:
    """Zernike moment magnitudes up to degree 8 of the contrast-normalised image (25 values)."""
    import cv2
    import mahotas

    g = cv2.resize(_grey(image), (ZERNIKE_SIZE, ZERNIKE_SIZE), interpolation=cv2.INTER_AREA).astype(np.float64)
    g = (g - g.min()) / (np.ptp(g) + 1e-9)
    return np.asarray(mahotas.features.zernike_moments(g, ZERNIKE_SIZE // 2, degree=ZERNIKE_DEGREE), np.float32)


def handcrafted_features(image: np.ndarray) -> np.ndarray:
    """GLCM ⊕ Zernike descriptor of one image (43 values)."""
    return np.concatenate([glcm_features(image), zernike_features(image)])


def extract_handcrafted(items, batch_size: int = 64, cache_dir=None, *, augmentation: str | None = None) -> np.ndarray:
    """N×43 hand-crafted descriptors, cached like deep embeddings."""
    from fabsight.die.embeddings import cached_vectors

    def compute(images: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {"handcrafted": np.stack([handcrafted_features(im) for im in images])}

    return cached_vectors(items, ["handcrafted"], compute, namespace=VERSION, cache=cache_dir,
                          batch_size=batch_size, augmentation=augmentation,
                          description="GLCM + Zernike features")["handcrafted"]
