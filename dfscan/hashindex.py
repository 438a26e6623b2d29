"""Exact Hamming-distance search over 256-bit hashes: multi-index hashing in numpy.

A hash is cut into 16 substrings of 16 bits. Two hashes within distance ``r`` agree within ``r // 16``
bits on at least one substring (pigeonhole: otherwise every substring differs in more than r // 16 bits
and the total exceeds r), so for the default distance 31 a query probes each substring's bucket and its
16 one-bit neighbours, and only the rows found there are compared in full. Nothing is approximate: every
row within ``r`` is found, and every row returned is within ``r``.

Each substring keeps its rows sorted by the substring's value (a row-number array, 4 bytes a row) and the
start of every value's bucket (65,537 offsets), so a probe is two array reads; rows arrive in blocks
(``add``): the newest wait in a small buffer searched by brute force, then become a block, and blocks
are merged log-structured (:class:`HashIndex`), so adding a row never re-sorts everything.

Chosen by measurement (bench/near_duplicates.py, docs/near-duplicates.md): faiss's flat binary index
scans every row (13 ms a query at 1M rows, so 130 ms at 10M) and its multi-hash index was slower still
through Python (270 ms at 1M); usearch's binary index is an approximate graph (HNSW), which can miss a
match. This index is exact, has no dependency beyond numpy, and its cost grows with the bucket sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HASH_BYTES = 32
_SUBSTRINGS = 16  # of 16 bits: a probe is a bucket of 65,536
_VALUES = 1 << 16
# A query's probes within one bit of each substring value.
_FLIPS = np.concatenate([[0], 1 << np.arange(16)]).astype(np.uint32)
# Rows kept in the brute-force buffer before they become a block.
_BUFFER = 1 << 14


@dataclass
class _Block:
    hashes: np.ndarray  # (n, 32) uint8
    keys: np.ndarray  # (n,) int64: the caller's row keys
    order: np.ndarray  # (16, n) uint32: rows sorted by each substring's value
    starts: np.ndarray  # (16, 65537) uint32: where each value's rows begin in ``order``

    @classmethod
    def of(cls, hashes: np.ndarray, keys: np.ndarray) -> _Block:
        subs = hashes.view(">u2").astype(np.int64)  # (n, 16): the substring values, big-endian
        order = np.empty((_SUBSTRINGS, len(hashes)), dtype=np.uint32)
        starts = np.empty((_SUBSTRINGS, _VALUES + 1), dtype=np.uint32)
        for j in range(_SUBSTRINGS):
            column = subs[:, j]
            order[j] = np.argsort(column, kind="stable")
            starts[j, 0] = 0
            np.cumsum(np.bincount(column, minlength=_VALUES), out=starts[j, 1:])
        return cls(hashes, keys, order, starts)

    def search(self, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query number, key, distance) of every row within ``radius`` of one of ``queries`` (a row
        found through several substrings is listed once)."""
        per = radius // _SUBSTRINGS
        if per == 0:
            flips = _FLIPS[:1]
        elif per == 1:
            flips = _FLIPS
        else:  # a wide radius: every value of a substring is a probe (exact, but slow)
            flips = np.arange(_VALUES, dtype=np.uint32)
        n = len(self.keys)
        qsubs = queries.view(">u2").astype(np.int64)  # (q, 16)
        # every probe of every substring of every query, as a flat index into ``starts``
        probes = (qsubs[:, :, None] ^ flips[None, None, :]) + _SUBSTRING_BASE[None, :, None]
        probes = probes.ravel()
        lo = self._starts_flat[probes].astype(np.int64)
        counts = self._starts_flat[probes + 1].astype(np.int64) - lo
        total = int(counts.sum())
        if total == 0:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, empty
        # the rows of every probed bucket, concatenated: lo[k] .. lo[k] + counts[k] for each probe k
        which = np.repeat(np.arange(len(probes)), counts)
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        substring = (which // len(flips)) % _SUBSTRINGS
        rows = self._order_flat[lo[which] + offsets + substring * n].astype(np.int64)
        qn = which // (len(flips) * _SUBSTRINGS)
        words, qwords = self.hashes.view(np.uint64), queries.view(np.uint64)
        dist = np.bitwise_count(words[rows] ^ qwords[qn]).sum(axis=1, dtype=np.int64)
        keep = dist <= radius
        pairs = np.unique(qn[keep] * n + rows[keep])  # few: only the matches
        qn, rows = pairs // n, pairs % n
        dist = np.bitwise_count(words[rows] ^ qwords[qn]).sum(axis=1, dtype=np.int64)
        return qn, self.keys[rows], dist

    @property
    def _starts_flat(self) -> np.ndarray:
        return self.starts.reshape(-1)

    @property
    def _order_flat(self) -> np.ndarray:
        return self.order.reshape(-1)


_SUBSTRING_BASE = np.arange(_SUBSTRINGS, dtype=np.int64) * (_VALUES + 1)


class HashIndex:
    """Rows of 256-bit hashes, each with an integer key (the caller's row id), searched exactly.

    New rows go to a small buffer searched by brute force (``_BUFFER`` rows cost about a millisecond);
    a full buffer becomes a block, and blocks are merged as in a log-structured tree (a block is merged into
    the one before it while it is at least half its size), so adding n rows costs O(n log n) in all and a
    look-up searches O(log n) blocks."""

    def __init__(self) -> None:
        self._blocks: list[_Block] = []
        self._buffer_hashes: list[np.ndarray] = []
        self._buffer_keys: list[np.ndarray] = []
        self._buffered = 0

    def __len__(self) -> int:
        return sum(len(b.keys) for b in self._blocks) + self._buffered

    @property
    def nbytes(self) -> int:
        """Memory the index holds (hashes, keys, sorted orders, bucket offsets)."""
        blocks = sum(b.hashes.nbytes + b.keys.nbytes + b.order.nbytes + b.starts.nbytes for b in self._blocks)
        return blocks + self._buffered * (HASH_BYTES + 8)

    def add(self, hashes: np.ndarray | list[bytes], keys: np.ndarray | list[int]) -> None:
        """Add rows: ``hashes`` (n, 32) uint8 or n 32-byte strings, ``keys`` their n integer keys."""
        array = _as_array(hashes)
        keys_array = np.asarray(keys, dtype=np.int64)
        if len(array) != len(keys_array):
            raise ValueError(f"{len(array)} hashes but {len(keys_array)} keys")
        if not len(array):
            return
        if len(array) >= _BUFFER:  # a bulk load: straight to a block
            self._push(_Block.of(array, keys_array))
            return
        self._buffer_hashes.append(array)
        self._buffer_keys.append(keys_array)
        self._buffered += len(array)
        if self._buffered >= _BUFFER:
            self._flush()

    def _flush(self) -> None:
        if self._buffered:
            hashes, keys = self._buffer()
            self._buffer_hashes, self._buffer_keys, self._buffered = [], [], 0
            self._push(_Block.of(hashes, keys))

    def _buffer(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self._buffer_hashes) > 1:  # keep one array: a look-up then scans it in one go
            self._buffer_hashes = [np.concatenate(self._buffer_hashes)]
            self._buffer_keys = [np.concatenate(self._buffer_keys)]
        return self._buffer_hashes[0], self._buffer_keys[0]

    def _push(self, block: _Block) -> None:
        self._blocks.append(block)
        while len(self._blocks) > 1 and 2 * len(self._blocks[-1].keys) >= len(self._blocks[-2].keys):
            last, before = self._blocks.pop(), self._blocks.pop()
            self._blocks.append(
                _Block.of(
                    np.concatenate([before.hashes, last.hashes]), np.concatenate([before.keys, last.keys])
                )
            )

    def compact(self) -> None:
        """Merge the buffer and every block into one block."""
        self._flush()
        if len(self._blocks) > 1:
            hashes = np.concatenate([b.hashes for b in self._blocks])
            keys = np.concatenate([b.keys for b in self._blocks])
            self._blocks = [_Block.of(hashes, keys)]

    def search(self, queries: np.ndarray | list[bytes], radius: int) -> list[list[tuple[int, int]]]:
        """For each query, ``[(key, distance)]`` of every row within ``radius``, nearest first."""
        array = _as_array(queries)
        out: list[list[tuple[int, int]]] = [[] for _ in range(len(array))]
        if not len(array):
            return out
        found = [block.search(array, radius) for block in self._blocks]
        if self._buffered:
            hashes, keys = self._buffer()
            words, qwords = hashes.view(np.uint64), array.view(np.uint64)  # 4 words a hash: 8x fewer ops
            dist = np.bitwise_count(words[None, :, :] ^ qwords[:, None, :]).sum(axis=2, dtype=np.int64)
            qn, rows = np.nonzero(dist <= radius)
            found.append((qn, keys[rows], dist[qn, rows]))
        for qn, keys_found, dist_found in found:
            for q, key, d in zip(qn.tolist(), keys_found.tolist(), dist_found.tolist(), strict=True):
                out[q].append((key, d))
        for hits in out:
            hits.sort(key=lambda hit: (hit[1], hit[0]))
        return out


def _as_array(hashes: np.ndarray | list[bytes]) -> np.ndarray:
    if isinstance(hashes, np.ndarray):
        array = np.ascontiguousarray(hashes, dtype=np.uint8)
    else:
        array = np.frombuffer(b"".join(hashes), dtype=np.uint8).copy()
    return array.reshape(-1, HASH_BYTES)
