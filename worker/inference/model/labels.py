"""Map a checkpoint's (or a dataset's) class names to dfscan's two canonical labels, by name.

The public checkpoints disagree on names and order: ``{0: "Real", 1: "Fake"}``,
``{0: "Deepfake", 1: "Real"}``, ``{0: "Realism", 1: "Deepfake"}``. Indices mean nothing; names do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from dfscan.exceptions import LabelMappingError

REAL = "real"
FAKE = "fake"

# Normalised names (lower case, letters and digits only) and what they mean.
_SYNONYMS: dict[str, str] = {
    **dict.fromkeys(
        ["real", "realism", "authentic", "genuine", "original", "pristine", "bonafide", "live", "true"],
        REAL,
    ),
    **dict.fromkeys(
        [
            "fake",
            "deepfake",
            "deepfakes",
            "synthetic",
            "generated",
            "aigenerated",
            "manipulated",
            "forged",
            "spoof",
            "false",
            "artificial",
        ],
        FAKE,
    ),
}


def canonical_label(name: str) -> str | None:
    """``"Deepfake"`` -> ``"fake"``, ``"Realism"`` -> ``"real"``, ``"cat"`` -> ``None``."""
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    if key.isdigit():  # "0"/"1" mean nothing by themselves; refuse rather than guess
        return None
    return _SYNONYMS.get(key)


def fake_real_indices(id2label: Mapping[int | str, str]) -> tuple[int, int]:
    """Return ``(fake_index, real_index)`` for a two-class label map, or raise LabelMappingError."""
    seen: dict[str, int] = {}
    for raw_index, name in id2label.items():
        canon = canonical_label(name)
        if canon is None:
            raise LabelMappingError(
                f"label {name!r} (index {raw_index}) is neither a real nor a fake class; "
                f"labels are {dict(id2label)}. Use a checkpoint whose id2label names its classes "
                "real/fake (or a synonym such as Realism/Deepfake)."
            )
        if canon in seen:
            raise LabelMappingError(f"two labels mean {canon!r}: {dict(id2label)}")
        seen[canon] = int(raw_index)
    if set(seen) != {REAL, FAKE}:
        raise LabelMappingError(f"expected exactly one real and one fake class, got {dict(id2label)}")
    return seen[FAKE], seen[REAL]
