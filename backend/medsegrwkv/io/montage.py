"""PNG montages of a stack with a labelmap overlay, for the demo and for quick review."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw

from medsegrwkv.io.atomic import IncompleteWrite, write_atomic
from medsegrwkv.preprocess.intensity import normalize_intensity


def overlay_rows(images: Sequence[sitk.Image], labelmaps: Sequence[sitk.Image], labels: list[dict[str, Any]],
                 titles: Sequence[str], alpha: float = 0.45, tile: int = 160) -> Image.Image:
    """One row per volume, one tile per slice (as stored: row j, column i), labels blended in colour."""
    colours = {int(l["value"]): np.array(l["color"]) * 255 for l in labels}
    n_cols = max(im.GetSize()[2] for im in images)
    canvas = Image.new("RGB", (n_cols * tile, len(images) * (tile + 16)), "black")
    draw = ImageDraw.Draw(canvas)
    for row, (image, labelmap, title) in enumerate(zip(images, labelmaps, titles)):
        gray = normalize_intensity(sitk.GetArrayViewFromImage(image)) * 255
        lab = sitk.GetArrayViewFromImage(labelmap)
        y0 = row * (tile + 16)
        draw.text((4, y0 + 2), title, fill="white")
        for k in range(gray.shape[0]):
            rgb = np.repeat(gray[k][..., None], 3, axis=2)
            for value, colour in colours.items():
                mask = lab[k] == value
                rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour
            h, w = rgb.shape[:2]
            scale = tile / max(h, w)  # keep the aspect ratio
            tile_img = Image.fromarray(rgb.astype(np.uint8)).resize((round(w * scale), round(h * scale)),
                                                                     Image.BILINEAR)
            canvas.paste(tile_img, (k * tile, y0 + 16))
    return canvas


def save_png_atomic(picture: Image.Image, path: str | Path) -> None:
    """Save as PNG, decoded again and compared before the rename (medsegrwkv.io.atomic)."""
    def verify(tmp: Path) -> None:
        with Image.open(tmp) as back:
            if back.size != picture.size or back.convert(picture.mode).tobytes() != picture.tobytes():
                raise IncompleteWrite(f"{tmp} does not hold the picture that was written")

    write_atomic(path, lambda tmp: picture.save(tmp, format="PNG"), verify)
