"""Random intensity networks: each training slice's grey levels remapped by a freshly drawn shallow
convolutional network, so the segmentation cannot lean on one scanner's contrast.

Other vendors' cine images differ from ACDC's Siemens ones in how blood, myocardium, fat and lung map
to grey levels and in local texture; gamma and histogram curves vary the global mapping only. The
idea, not the code, is Ouyang et al.'s global intensity non-linear augmentation ("Causality-inspired
single-source domain generalization for medical image segmentation", IEEE TMI 2022): a few random
convolutions (kernels 1x1 or 3x3) with leaky ReLUs between them, blended with the original by a
random weight. The result is brought back to the slice's own 1st-99th percentile range, where the
inference pipeline's normalisation puts every study.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

PERCENTILES = (0.01, 0.99)


class RandIntensityNetworkd(RandomizableTransform, MapTransform):
    """With probability `prob`, remap each image (C, [D,] H, W) by a random `layers`-deep network of
    `width` channels, every channel and slice through the same network (2.5D neighbours stay alike)."""

    def __init__(self, keys: KeysCollection, prob: float = 0.3, layers: int = 4, width: int = 2) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.layers, self.width = layers, width
        self._weights: list[torch.Tensor] = []
        self._blend = 0.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        channels = [1] + [self.width] * (self.layers - 1) + [1]
        self._weights = []
        for cin, cout in zip(channels[:-1], channels[1:]):
            k = int(self.R.choice((1, 3)))
            std = (2.0 / (cin * k * k)) ** 0.5  # He scale keeps the signal's size through the leaky ReLUs
            self._weights.append(torch.from_numpy(self.R.normal(0.0, std, (cout, cin, k, k))).float())
        self._blend = float(self.R.uniform(0.0, 1.0))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = self.remap(d[key])
        return d

    def remap(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(image, dtype=torch.float32)
        y = x.reshape(-1, 1, *x.shape[-2:])  # every channel and slice through the same 2D network
        for i, w in enumerate(self._weights):
            y = F.conv2d(y, w, padding=w.shape[-1] // 2)
            if i < len(self._weights) - 1:
                y = F.leaky_relu(y, 0.2)
        y = y.reshape(x.shape)
        lo, hi = torch.quantile(x.flatten(), torch.tensor(PERCENTILES))
        ylo, yhi = torch.quantile(y.flatten(), torch.tensor(PERCENTILES))
        if float(yhi - ylo) > 1e-6:
            y = (y - ylo) / (yhi - ylo) * (hi - lo) + lo
        else:
            y = x
        out = (self._blend * y + (1.0 - self._blend) * x).clamp(float(x.min()), float(x.max()))
        return image.clone().copy_(out) if isinstance(image, torch.Tensor) else out.numpy()  # keeps MetaTensor meta
