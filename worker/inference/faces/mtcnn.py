"""MTCNN face detection in plain torch, with the weights that ship inside dfscan (``weights/``).

MTCNN (Zhang et al. 2016) is the detector the DFDC winner cropped faces with. Its three small networks'
weights (``pnet.pt``, ``rnet.pt``, ``onet.pt``, 2 MB together) are package data of dfscan, in
``worker/inference/weights/`` beside their LICENSE (MIT: the original Caffe models, David Sandberg's
TensorFlow conversion, and facenet-pytorch 2.6.0's PyTorch state dicts, copied from its wheel byte for
byte), so nothing downloads at run time and ``pip install 'dfscan[worker]'`` is the only install step.
facenet-pytorch's Python package is not used: its detection code imports torchvision for one NMS call
and its metadata pins ``torch<2.3``. The three networks and the cascade are re-stated here, with a
plain-torch NMS.

The cascade is facenet-pytorch's ``detect_face`` with these changes:

- each image is first shrunk so its longest side is at most ``detect_side`` pixels (the cost then no
  longer grows with the photo's resolution); boxes are mapped back to the original's pixels;
- every network is fed many images at once, on the detector's device (the model's): the P-net runs once
  per pyramid level for all images of a call (images of different sizes padded to a common one, the
  padding masked out so each image's maps are what it gives alone: :meth:`PNet.forward`), the R-net and
  O-net once for all candidate boxes of all images; uint8 pixels cross to the device and are normalised
  there. Candidates, caps and NMS stay per image, so a batch finds what each image finds alone
  (``tests/unit/test_face_mtcnn_batched.py``);
- the O-net's five facial landmarks (eyes, nose, mouth corners) come back on each Face, in the original's
  pixels, for :mod:`worker.inference.faces.screen`'s plausibility check;
- the work per image is capped (``MAX_LEVEL_CANDIDATES`` per pyramid level before its NMS,
  ``MAX_RNET_INPUTS``, ``MAX_ONET_INPUTS``), keeping the best-scoring boxes, so no texture can make one
  image cost more than the caps allow (``bench/face_cost.py``: a 640 px image forced through every stage
  costs about 1.1 CPU s capped, 21 s uncapped).
"""

from __future__ import annotations

import logging
import math
import pickle
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from dfscan.exceptions import ModelLoadError
from worker.inference.faces.crops import Face, register_face_detector

logger = logging.getLogger(__name__)

# facenet-pytorch's defaults, which its authors tuned on WIDER FACE: the P-net/R-net/O-net score
# thresholds and the image pyramid's scale step.
THRESHOLDS = (0.6, 0.7, 0.7)
PYRAMID_FACTOR = 0.709
# Smallest face (in pixels of the shrunk copy) the pyramid looks for; 12 px is the P-net's window, so 20
# is the usual lower bound (facenet-pytorch's default).
MIN_FACE = 20
# Longest side of the copy the cascade runs on. Measured (README, Faces): at 640 px a 1024x768 photo is
# shrunk 0.625x, faces of 32 px become 20 px and are still found, and detection costs a fraction of a
# ViT-B forward on 2 CPU threads.
DETECT_SIDE = 640
# Caps on the cascade's work per image, so its cost is bounded whatever the pixels (a texture made by
# gradient ascent on the P-net fires at every window). Each cuts to the best-scoring boxes: per pyramid
# level before that level's NMS (NMS costs candidates x kept), then the R-net's and the O-net's inputs.
# Chosen by measurement (bench/face_cost.py, 1 torch thread, loaded 2-core machine): real photos of people
# reach at most 85 candidates on a level, 148 R-net and 9 O-net inputs; a 640x480 mosaic of 80 real faces
# 658, 674 and 318 (about 4 O-net inputs per face, so 500 leaves room for ~125 faces at the detector's
# scale); a texture made by gradient ascent on the P-net 4,462 on a level and 5,432 R-net inputs (1.35 CPU s
# uncapped, 0.59 s capped); every window forced through (thresholds 0) 35,344, 14,133 and 13,690 (20.8 s
# uncapped, 1.07 s capped). Every real photo's faces are the same with and without the caps.
MAX_LEVEL_CANDIDATES = 2000
MAX_RNET_INPUTS = 2000
MAX_ONET_INPUTS = 500
# How the P-net is fed many images at once (one forward per pyramid level for all of a call's images):
# images of different sizes are padded to a common one, at most PAD_WASTE times their own pixels (else
# they go in several forwards), and one forward takes at most MAX_PNET_PIXELS pixels (its first layer's
# output is 40 bytes a pixel: 4 Mpx is ~170 MB).
PAD_WASTE = 1.5
MAX_PNET_PIXELS = 1 << 22


# The three networks' state dicts, package data in worker/inference/weights/ (see the LICENSE there).
WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")


def _weights_dir() -> Path:
    """The folder of the MTCNN weights shipped as package data (``worker/inference/weights/``)."""
    data = Path(str(resources.files("worker.inference").joinpath("weights")))
    missing = [name for name in WEIGHT_FILES if not (data / name).is_file()]
    if missing:
        raise ModelLoadError(
            f"the mtcnn face detector's weights {', '.join(missing)} are missing from {data}: reinstall "
            "dfscan (pip install --force-reinstall 'dfscan[worker]'), or set DFSCAN_FACES=off"
        )
    return data


def _load_weights(net: nn.Module, path: Path) -> None:
    """Load one network's state dict; a truncated or foreign file is a ModelLoadError, not a crash."""
    try:
        # facenet-pytorch's Softmax modules hold no weights; its state dict matches these modules.
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(
            f"cannot load the mtcnn face detector's weights {path}: {type(exc).__name__}: {exc}; reinstall "
            "dfscan (pip install --force-reinstall 'dfscan[worker]'), or set DFSCAN_FACES=off"
        ) from exc


class PNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(
        self, x: torch.Tensor, sizes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: a batch of images, each padded at its right and bottom; ``sizes``: ``(N, 2)`` the height and
        width of each image before padding (None: none is padded).

        Every layer but the pooling is a valid (unpadded) convolution, so an output cell inside an image's own
        output map sees only that image's pixels, with one exception that the masks below remove: the
        ceil-mode pooling's last, partial window. Alone, it takes the maximum of the image's last column
        (row) of features; in a padded batch it would also see the padding's. The features beyond each image
        are set to -inf before pooling (the maximum ignores them: the same numbers as alone) and the pooled
        cells made only of padding to 0 after it (finite, so no convolution algorithm spreads an infinity
        into a neighbouring cell). The caller crops each image's map to :func:`pnet_output_size`.
        """
        x = self.prelu1(self.conv1(x))
        if sizes is not None:
            x = x.masked_fill(_beyond(sizes - 2, x.shape[2], x.shape[3]), float("-inf"))
        x = self.pool1(x)
        if sizes is not None:
            x = x.masked_fill(_beyond((sizes - 1) // 2, x.shape[2], x.shape[3]), 0.0)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


def _beyond(sizes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(N, 1, height, width)`` True where a cell lies outside its image's ``sizes`` (N, 2: rows, columns)."""
    rows = torch.arange(height, device=sizes.device)[None, :, None] >= sizes[:, 0, None, None]
    cols = torch.arange(width, device=sizes.device)[None, None, :] >= sizes[:, 1, None, None]
    return (rows | cols)[:, None]


def pnet_output_size(height: int, width: int) -> tuple[int, int]:
    """The P-net's output map for an image of ``height`` x ``width``: conv 3, ceil-mode pool 2, conv 3, conv 3."""
    return (height - 2 + 1) // 2 - 4, (width - 2 + 1) // 2 - 4


class RNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # landmarks: 5 x, then 5 y, relative to the box

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), torch.softmax(self.dense6_1(x), dim=1), self.dense6_3(x)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, best first.

    ``boxes`` are ``(N, 4)`` x1, y1, x2, y2. ``method`` ``"union"`` compares intersection over union,
    ``"min"`` intersection over the smaller box (MTCNN's last stage, which drops a box inside another).
    """
    if len(boxes) == 0:
        return np.empty((0,), dtype=np.int64)
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _batched_nms(
    boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float, method: str = "union"
) -> np.ndarray:
    """NMS within each group (image, or image and scale): groups are shifted apart so they never overlap."""
    if len(boxes) == 0:
        return np.empty((0,), dtype=np.int64)
    offset = (boxes[:, :4].max() + 1) * groups.astype(np.float64)
    return nms(boxes[:, :4] + offset[:, None], scores, threshold, method)


def _rerec(boxes: np.ndarray) -> np.ndarray:
    """Make boxes square around their centre (side = the longer side)."""
    out = boxes.copy()
    w = out[:, 2] - out[:, 0]
    h = out[:, 3] - out[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = out[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = out[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _bbreg(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    w = out[:, 2] - out[:, 0] + 1
    h = out[:, 3] - out[:, 1] + 1
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


class MtcnnDetector:
    """The MTCNN cascade on one device. Build it with :func:`load_mtcnn`."""

    def __init__(
        self,
        device: torch.device,
        *,
        detect_side: int = DETECT_SIDE,
        min_face: int = MIN_FACE,
        max_level_candidates: int = MAX_LEVEL_CANDIDATES,
        max_rnet_inputs: int = MAX_RNET_INPUTS,
        max_onet_inputs: int = MAX_ONET_INPUTS,
    ) -> None:
        data = _weights_dir()
        self.device = device
        self.detect_side = detect_side
        self.min_face = min_face
        self.max_level_candidates = max_level_candidates
        self.max_rnet_inputs = max_rnet_inputs
        self.max_onet_inputs = max_onet_inputs
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for net, name in ((self.pnet, "pnet"), (self.rnet, "rnet"), (self.onet, "onet")):
            _load_weights(net, data / f"{name}.pt")
            # channels_last: the HWC pixels need no transpose, and max pooling and the small
            # convolutions ran ~1.8x faster in that layout on CPU here (55 vs 95 ms CPU per 1024x768 scene).
            net.eval().to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        t = "/".join(f"{x:g}" for x in THRESHOLDS)
        self.version = f"mtcnn-facenet-pytorch-2.6(side={detect_side},min={min_face},thr={t})"

    def detect(self, images: list[Image.Image]) -> list[list[Face]]:
        """Faces in each image, boxes in that image's pixels, best score first."""
        with torch.inference_mode():
            return self._detect(images)

    def _detect(self, images: list[Image.Image]) -> list[list[Face]]:
        smalls: list[Image.Image] = []
        scales: list[float] = []
        for image in images:
            small, scale = self._shrink(image)
            smalls.append(small)
            scales.append(scale)
        # Stage 1: the P-net over every image's pyramid, one forward per level (and padding group) for all.
        boxes_all: list[np.ndarray] = []
        for index, found in enumerate(self._stage_one(smalls)):
            if len(found):
                boxes_all.append(np.concatenate([found, np.full((len(found), 1), index, np.float64)], axis=1))
        result: list[list[Face]] = [[] for _ in images]
        if not boxes_all:
            return result
        boxes = np.concatenate(boxes_all)  # x1 y1 x2 y2 score image
        # Stage 2 (R-net) and 3 (O-net), each once over the candidates of every image.
        boxes = self._refine(smalls, boxes, self.rnet, 24, THRESHOLDS[1], "union")
        boxes = _best_per_image(boxes, self.max_onet_inputs)
        boxes = self._refine(smalls, boxes, self.onet, 48, THRESHOLDS[2], "min")
        for row in boxes:
            x1, y1, x2, y2, score, index = row[:6]
            i = int(index)
            face = _to_face(x1, y1, x2, y2, float(score), scales[i], images[i].size, row[6:16])
            if face is not None:
                result[i].append(face)
        for faces in result:
            faces.sort(key=lambda f: -f.score)
        return result

    def _shrink(self, image: Image.Image) -> tuple[Image.Image, float]:
        if image.mode != "RGB":
            image = image.convert("RGB")
        longest = max(image.size)
        if longest <= self.detect_side:
            return image, 1.0
        scale = self.detect_side / longest
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        # reducing_gap: Pillow first shrinks by an integer factor in the decoder-friendly box filter,
        # then resamples; several times faster than a plain resize of a large photo, same result at 12 px.
        return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0), scale

    def _tensor(self, arrays: list[np.ndarray] | np.ndarray) -> torch.Tensor:
        """uint8 HWC arrays (a list, or one NHWC array) to the nets' normalised NCHW float input
        (channels_last memory), on the device: uint8 crosses to the device, the arithmetic happens there."""
        stacked = arrays if isinstance(arrays, np.ndarray) else np.stack(arrays)
        batch = torch.from_numpy(stacked).to(self.device)
        return ((batch.float() - 127.5) * 0.0078125).permute(0, 3, 1, 2)

    def _stage_one(self, smalls: list[Image.Image]) -> list[np.ndarray]:
        """Each image's P-net candidates (``x1 y1 x2 y2 score``, squared), after NMS within and across levels.

        Level by level, the images that still have that level are resampled (Pillow) and go through the
        P-net together, padded to a common size (:meth:`PNet.forward` masks the padding out); images whose
        sizes differ too much for one padded batch go in several (:func:`_padding_groups`). Candidates,
        caps and NMS stay per image, as if each image were alone.
        """
        m = 12.0 / self.min_face
        # The same float arithmetic as one image at a time: the scale and each image's shorter side
        # shrink by PYRAMID_FACTOR per level.
        minl = [min(img.size) * m for img in smalls]
        scale = m
        found: list[list[np.ndarray]] = [[] for _ in smalls]
        while True:
            active = [i for i, side in enumerate(minl) if side >= 12]
            if not active:
                break
            levels: dict[int, Image.Image] = {}
            for i in active:
                w, h = smalls[i].size
                # Pillow's BOX filter is the area average facenet-pytorch resamples with, several times
                # faster on CPU than torch's adaptive pooling at these ratios.
                levels[i] = smalls[i].resize((int(w * scale + 1), int(h * scale + 1)), Image.Resampling.BOX)
            for group in _padding_groups([(i, levels[i].size[::-1]) for i in active]):
                for i, boxes in zip(group, self._pnet([levels[i] for i in group], scale), strict=True):
                    if len(boxes) > self.max_level_candidates:  # before NMS, whose cost is candidates x kept
                        best = np.argpartition(-boxes[:, 4], self.max_level_candidates - 1)
                        boxes = boxes[best[: self.max_level_candidates]]
                    if len(boxes):
                        keep = nms(boxes[:, :4], boxes[:, 4], 0.5)
                        found[i].append(boxes[keep])
            scale *= PYRAMID_FACTOR
            minl = [side * PYRAMID_FACTOR for side in minl]
        return [self._merge_levels(levels_found) for levels_found in found]

    def _pnet(self, images: list[Image.Image], scale: float) -> list[np.ndarray]:
        """The P-net over RGB images of one level (``scale``) in one forward; per image its candidate boxes
        ``x1 y1 x2 y2 score dx1 dy1 dx2 dy2`` in the shrunk image's pixels (:func:`_generate`).

        The threshold is applied on the device over the whole batch (the padding's cells excluded), and
        only the cells that pass come back: one device sync per level, whatever the number of images."""
        heights = [image.height for image in images]
        widths = [image.width for image in images]
        height, width = max(heights), max(widths)
        batch = self._tensor(_stacked(images, height, width))
        padded = any(h != height or w != width for h, w in zip(heights, widths, strict=True))
        sizes = torch.tensor(list(zip(heights, widths, strict=True)), device=self.device) if padded else None
        reg, probs = self.pnet(batch, sizes)
        outputs = [pnet_output_size(h, w) for h, w in zip(heights, widths, strict=True)]
        if self.device.type == "cpu":  # numpy's few calls cost less than torch's many small ones here
            prob_np = probs[:, 1].numpy()
            hit_np = prob_np >= THRESHOLDS[0]
            if padded:
                for k, (oh, ow) in enumerate(outputs):
                    hit_np[k, oh:] = False
                    hit_np[k, :, ow:] = False
            n_np, ys_np, xs_np = np.nonzero(hit_np)
            cells = np.stack([n_np, ys_np, xs_np])
            score = prob_np[n_np, ys_np, xs_np]
            offsets = reg.numpy()[n_np, :, ys_np, xs_np]
        else:
            hit = probs[:, 1] >= THRESHOLDS[0]
            if padded:
                hit &= ~_beyond(torch.tensor(outputs, device=self.device), hit.shape[1], hit.shape[2])[:, 0]
            n, ys, xs = hit.nonzero(as_tuple=True)  # row-major: per image, the order numpy's nonzero gives
            cells = torch.stack([n, ys, xs]).cpu().numpy()
            score = probs[n, 1, ys, xs].cpu().numpy()
            offsets = reg[n, :, ys, xs].cpu().numpy()
        boxes = _generate(cells[1], cells[2], score, offsets, scale)
        return np.split(boxes, np.cumsum(np.bincount(cells[0], minlength=len(images)))[:-1])

    def _merge_levels(self, found: list[np.ndarray]) -> np.ndarray:
        """One image's candidates of every level: NMS across levels, the R-net cap, boxes regressed and squared."""
        if not found:
            return np.empty((0, 5))
        boxes = np.concatenate(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        boxes = boxes[: self.max_rnet_inputs]  # NMS keeps the best first
        regw = boxes[:, 2] - boxes[:, 0]
        regh = boxes[:, 3] - boxes[:, 1]
        out = np.stack(
            [
                boxes[:, 0] + boxes[:, 5] * regw,
                boxes[:, 1] + boxes[:, 6] * regh,
                boxes[:, 2] + boxes[:, 7] * regw,
                boxes[:, 3] + boxes[:, 8] * regh,
                boxes[:, 4],
            ],
            axis=1,
        )
        return _rerec(out)

    def _refine(
        self,
        smalls: list[Image.Image],
        boxes: np.ndarray,
        net: nn.Module,
        size: int,
        threshold: float,
        method: str,
    ) -> np.ndarray:
        if len(boxes) == 0:
            return boxes
        patches: list[Image.Image] = []
        kept: list[int] = []
        for k, (x1, y1, x2, y2, _, index) in enumerate(boxes):
            img = smalls[int(index)]
            w, h = img.size
            # facenet-pytorch's pad(): 1-based inclusive corners clipped to the image.
            x = max(int(math.trunc(x1)), 1)
            y = max(int(math.trunc(y1)), 1)
            ex = min(int(math.trunc(x2)), w)
            ey = min(int(math.trunc(y2)), h)
            if ey > y - 1 and ex > x - 1:
                patches.append(img.resize((size, size), Image.Resampling.BOX, box=(x - 1, y - 1, ex, ey)))
                kept.append(k)
        if not patches:
            return boxes[:0]
        boxes = boxes[kept]
        data = self._tensor(_stacked(patches, size, size))
        regs: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        marks: list[np.ndarray] = []
        for start in range(0, len(data), 512):  # bounded device memory per forward
            reg, probs, *points = net(data[start : start + 512])
            regs.append(reg.cpu().numpy())
            scores.append(probs[:, 1].cpu().numpy())
            marks.extend(p.cpu().numpy() for p in points)
        reg_all = np.concatenate(regs)
        score = np.concatenate(scores)
        passed = score > threshold
        boxes, reg_all, score = boxes[passed], reg_all[passed], score[passed]
        boxes[:, 4] = score
        if marks:  # the O-net: landmarks relative to the box before regression (facenet-pytorch's rule)
            rel = np.concatenate(marks)[passed]
            w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
            h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
            points_x = w * rel[:, 0:5] + boxes[:, 0:1] - 1
            points_y = h * rel[:, 5:10] + boxes[:, 1:2] - 1
            boxes = np.concatenate([boxes[:, :6], points_x, points_y], axis=1)
        if method == "union":
            keep = _batched_nms(boxes, score, boxes[:, 5], 0.7)
            boxes, reg_all = boxes[keep], reg_all[keep]
            out = _bbreg(boxes, reg_all)
            out[:, :4] = _rerec(out[:, :4])
            return out
        out = _bbreg(boxes, reg_all)
        keep = _batched_nms(out, score, out[:, 5], 0.7, "min")
        return out[keep]


def _stacked(images: list[Image.Image], height: int, width: int) -> np.ndarray:
    """``(N, height, width, 3)`` uint8: the images pasted (top left, zero padding) into one canvas and read
    out once (each ``np.asarray`` of a Pillow image costs a ``tobytes`` call: ~0.1 ms of Python apiece)."""
    if len(images) == 1:
        return np.array(images[0])[None]
    canvas = Image.new("RGB", (width, height * len(images)))
    for k, image in enumerate(images):
        canvas.paste(image, (0, k * height))
    return np.array(canvas).reshape(len(images), height, width, 3)


def _padding_groups(shapes: list[tuple[int, tuple[int, int]]]) -> list[list[int]]:
    """Images of one pyramid level (``(index, (height, width))``) in groups that go through the P-net
    together: each group's padded batch is at most ``PAD_WASTE`` times its images' own pixels and at
    most ``MAX_PNET_PIXELS`` (unless one image alone is larger). Same-size images (frames of a video,
    photos from one camera) need no padding and share one group."""
    ordered = sorted(shapes, key=lambda item: (-item[1][0], -item[1][1], item[0]))
    groups: list[list[int]] = []
    current: list[int] = []
    top = widest = own = 0
    for index, (h, w) in ordered:
        if current:
            padded = (len(current) + 1) * top * max(widest, w)
            if padded <= PAD_WASTE * (own + h * w) and padded <= MAX_PNET_PIXELS:
                current.append(index)
                widest, own = max(widest, w), own + h * w
                continue
            groups.append(current)
        current, top, widest, own = [index], h, w, h * w
    if current:
        groups.append(current)
    return groups


def _best_per_image(boxes: np.ndarray, cap: int) -> np.ndarray:
    """At most ``cap`` boxes (column 5: the image) of each image, its best-scoring (column 4), in order."""
    if len(boxes) <= cap:
        return boxes
    keep: list[np.ndarray] = []
    for index in np.unique(boxes[:, 5]):
        rows = np.nonzero(boxes[:, 5] == index)[0]
        if len(rows) > cap:
            rows = rows[np.argsort(-boxes[rows, 4], kind="stable")[:cap]]
        keep.append(rows)
    return boxes[np.sort(np.concatenate(keep))]


def _generate(ys: np.ndarray, xs: np.ndarray, score: np.ndarray, reg: np.ndarray, scale: float) -> np.ndarray:
    """P-net output cells that passed the threshold (row ``ys``, column ``xs``, their face probability and
    ``(k, 4)`` box regression) to candidate boxes ``x1 y1 x2 y2 score dx1 dy1 dx2 dy2`` in the shrunk image."""
    if len(ys) == 0:
        return np.empty((0, 9))
    q1x = np.floor((2 * xs + 1) / scale)
    q1y = np.floor((2 * ys + 1) / scale)
    q2x = np.floor((2 * xs + 12) / scale)
    q2y = np.floor((2 * ys + 12) / scale)
    return np.stack([q1x, q1y, q2x, q2y, score, reg[:, 0], reg[:, 1], reg[:, 2], reg[:, 3]], axis=1)


def _to_face(
    x1: float,
    y1: float,
    x2: float,
    y2: float,
    score: float,
    scale: float,
    size: tuple[int, int],
    points: np.ndarray | None = None,
) -> Face | None:
    """A box of the shrunk copy as a Face in the original's pixels, clipped to the image; ``points``
    (5 x then 5 y, the O-net's landmarks in the shrunk copy) as ``landmarks`` in the original's pixels."""
    width, height = size
    left = max(0, min(width, math.floor(x1 / scale)))
    top = max(0, min(height, math.floor(y1 / scale)))
    right = max(0, min(width, math.ceil(x2 / scale)))
    bottom = max(0, min(height, math.ceil(y2 / scale)))
    if right - left < 1 or bottom - top < 1 or not math.isfinite(score):
        return None
    landmarks = None
    if points is not None and len(points) == 10 and np.isfinite(points).all():
        landmarks = tuple((float(points[k]) / scale, float(points[k + 5]) / scale) for k in range(5))
    return Face(box=(left, top, right - left, bottom - top), score=score, landmarks=landmarks)


@register_face_detector("mtcnn")
def load_mtcnn(device: torch.device, threads: int | None = None) -> MtcnnDetector:
    """MTCNN on ``device``; ``threads`` sets torch's intra-op threads (shared with the model in a worker)."""
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    return MtcnnDetector(device)
