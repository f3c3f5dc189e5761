"""Per-slice intensity normalisation to [0, 1] (thesis 3.1.8-3.1.10, 4.2.1.4)."""

import numpy as np

# Thesis 3.1.8: MIN_BOUND and MAX_BOUND of the CT window, in Hounsfield units.
HU_MIN = -1000.0
HU_MAX = 1400.0

MODALITIES = ("CT", "MR", "XR")


def hu_window(array, hu_min=HU_MIN, hu_max=HU_MAX):
    """Clips Hounsfield units to [hu_min, hu_max] and scales them to [0, 1] (thesis Fig. 3.8).

    Args:
        array: array-like of HU values, any shape.
        hu_min: float. Lower bound of the window. Defaults to -1000 (air).
        hu_max: float. Upper bound. Defaults to 1400; brighter values are artefacts (thesis 3.1.8).

    Returns:
        float32 array of the same shape, in [0, 1].
    """
    if not hu_max > hu_min:
        raise ValueError(f"hu_max must be greater than hu_min. Received: hu_min={hu_min}, hu_max={hu_max}")
    array = np.asarray(array, dtype=np.float32)
    scaled = (array - np.float32(hu_min)) / np.float32(hu_max - hu_min)
    return np.clip(np.nan_to_num(scaled, nan=0.0), 0.0, 1.0).astype(np.float32)


def normalize_slice(array2d, modality, bit_depth=None):
    """Normalises one 2D slice to float32 in [0, 1] by modality.

    - `CT`: HU window -1000..1400 (thesis 3.1.8).
    - `MR`: divided by the slice's own maximum (thesis 3.1.9); an all-zero slice stays zero.
    - `XR`: divided by the maximum of the source bit depth (thesis 3.1.10): 255 for 8-bit
      PNG/JPEG, 65535 for 16-bit PNG, 2**BitsStored - 1 for DICOM radiographs.

    Args:
        array2d: array-like (H, W).
        modality: str. One of 'CT', 'MR', 'XR'.
        bit_depth: int or None. For XR, the bits of the source pixels (`meta['bit_depth']`
            from the reader). Defaults to 8 when every value fits in 8 bits, else 16.

    Returns:
        float32 (H, W) in [0, 1], never NaN.
    """
    array = np.asarray(array2d, dtype=np.float32)
    if modality == "CT":
        return hu_window(array)
    array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    if modality == "MR":
        array = np.maximum(array, 0.0)  # MR magnitude is non-negative; negatives are reconstruction noise.
        peak = float(array.max()) if array.size else 0.0
        scaled = array / np.float32(peak) if peak > 0 else np.zeros_like(array)
    elif modality == "XR":
        if bit_depth is None:
            bit_depth = 8 if float(array.max(initial=0.0)) <= 255.0 else 16
        scaled = array / np.float32(2.0 ** int(bit_depth) - 1.0)
    else:
        raise ValueError(f"modality must be one of {MODALITIES}. Received: modality={modality!r}")
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)
