"""A torch Dataset over labelled examples: read bytes, decode, augment, preprocess as at serving time.

Decoding uses the serving decoder (``decode_image``: EXIF orientation, first frame, RGB) and the tensor
comes from the checkpoint's saved preprocessing (``to_tensor``), so training and serving cannot drift.

An image that passed the loader's cheap check but still fails to decode is logged, counted in
``failed`` and replaced by the next example of the split, so one bad file does not stop a long run.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import torch

from dfscan.exceptions import DfscanError, TrainingDataError
from worker.inference.images.decode import ImagePolicy, decode_image
from worker.inference.model.preprocess import PreprocessConfig, to_tensor
from worker.training.augment import AugmentConfig, augment
from worker.training.data import Example

log = logging.getLogger(__name__)


class ImageDataset(torch.utils.data.Dataset[dict[str, torch.Tensor | int]]):
    """``{"pixel_values": float32 (3, H, W), "labels": 0|1}`` per example (0 = Real, 1 = Fake).

    With ``augment_cfg`` each access draws its transforms from ``random.Random("seed:index:n")``, n being
    how often this index was read before: a run with the same seed and order sees the same images.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        preprocess: PreprocessConfig,
        *,
        augment_cfg: AugmentConfig | None = None,
        seed: int = 0,
        policy: ImagePolicy | None = None,
    ) -> None:
        if not examples:
            raise TrainingDataError("cannot build a dataset from an empty split")
        self.examples = list(examples)
        self.preprocess = preprocess
        self.augment_cfg = augment_cfg
        self.seed = seed
        self.policy = policy or ImagePolicy()
        self.failed: set[str] = set()
        self._draws = [0] * len(self.examples)
        height, width = preprocess.size
        # JPEGs may decode at a reduced scale, but keep twice the input size so crops stay sharp
        self._draft = (2 * width, 2 * height)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def labels(self) -> list[int]:
        return [e.label for e in self.examples]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        n = len(self.examples)
        for offset in range(n):
            example = self.examples[(index + offset) % n]
            try:
                if example.region is not None:  # a region's box is in full-size pixels: no draft
                    image = example.region(decode_image(example.read(), self.policy))
                else:
                    image = decode_image(example.read(), self.policy, draft_size=self._draft)
            except (DfscanError, OSError) as exc:
                if example.name not in self.failed:
                    log.warning("skipping undecodable image %s: %s", example.name, exc)
                    self.failed.add(example.name)
                continue
            if self.augment_cfg is not None:
                rng = random.Random(f"{self.seed}:{index}:{self._draws[index]}")
                self._draws[index] += 1
                image = augment(image, self.augment_cfg, rng)
            return {"pixel_values": to_tensor(image, self.preprocess), "labels": example.label}
        raise TrainingDataError(f"none of the {n} images of this split can be decoded")
