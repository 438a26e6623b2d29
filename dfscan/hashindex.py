"""Exact Hamming-distance search over 256-bit hashes: multi-index hashing in numpy.

A hash is cut into 11 substrings (three of 24 bits, eight of 23). Two hashes within distance ``r`` agree
within ``r // 11`` bits on at least one substring (pigeonhole: otherwise every substring differs in more
than r // 11 bits and the total exceeds r), so for the default distance 31 a query probes, in each
substring, its value and every value within 2 bits of it (277 or 301 probes), and only the rows found
there are compared in full. Nothing is approximate: every row within ``r`` is found, and every row
returned is within ``r``.

Each substring keeps its rows sorted by the substring's value (a row-number array, 4 bytes a row) and a
direct table of where each value's rows begin, over the value's top ``p`` bits, ``p`` about log2 of the
rows (so a probed bucket holds about one row whatever the size, and the tables cost about 4 bytes a row
each); a probe is two adjacent table reads. Eleven substrings of 23-24 bits are the measured sweet spot for
distance 31 (docs/near-duplicates.md): sixteen of 16 bits probe 272 buckets of n / 65,536 rows each (about
150 rows a bucket at 10M rows, 40,000 candidates a hash), eight of 32 bits need 5,489 probes a substring.

Rows arrive in blocks (``add``): the newest wait in a small buffer searched by brute force, then become a
block, and blocks are merged log-structured (:class:`HashIndex`), so adding a row never re-sorts
everything. A block too small to gain from its tables is searched by brute force too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np

HASH_BYTES = 32
# (first bit, width) of each substring, bits counted from the most significant of the 256
_WIDTHS = (24, 24, 24, 23, 23, 23, 23, 23, 23, 23, 23)
_STARTS = tuple(int(s) for s in np.cumsum((0, *_WIDTHS[:-1])))
_SUBSTRINGS = len(_WIDTHS)
# Rows kept in the brute-force buffer before they become a block, and the smallest block given tables:
# brute force over a few thousand rows costs less than probing (about 25,000 probes for 8 queries).
_BUFFER = 1 << 12
_BRUTE_BELOW = 1 << 14
# Past this many probes a query (a wide radius), scanning every row costs less.
_MAX_PROBES = 1 << 18


def substrings(hashes: np.ndarray) -> np.ndarray:
    """(n, 11) uint32: each row's substring values (``hashes`` is (n, 32) uint8)."""
    words = _words(hashes)
    out = np.empty((len(hashes), _SUBSTRINGS), dtype=np.uint32)
    for j in range(_SUBSTRINGS):
        out[:, j] = _substring(words, j)
    return out


def _words(hashes: np.ndarray) -> np.ndarray:
    return hashes.view(">u8").astype(np.uint64)  # (n, 4), bit 0 is the top bit of word 0


def _substring(words: np.ndarray, j: int) -> np.ndarray:
    """Substring ``j`` of every row of ``words`` (see ``_words``), as uint32."""
    start, width = _STARTS[j], _WIDTHS[j]
    word, offset = divmod(start, 64)
    if offset + width <= 64:
        value = words[:, word] >> np.uint64(64 - offset - width)
    else:
        spill = offset + width - 64
        value = (words[:, word] << np.uint64(spill)) | (words[:, word + 1] >> np.uint64(64 - spill))
    return (value & np.uint64((1 << width) - 1)).astype(np.uint32)


def _masks(width: int, bits: int) -> np.ndarray:
    """Every ``width``-bit value with at most ``bits`` bits set (the probes' offsets)."""
    out = [0]
    for k in range(1, bits + 1):
        out += [sum(1 << b for b in c) for c in combinations(range(width), k)]
    return np.array(out, dtype=np.uint32)


_MASK_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _probes(qsubs: np.ndarray, per: int, prefix: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(query number, substring, bucket) of every probe of ``qsubs`` (q, 11): each substring's top
    ``prefix`` bits and every value within ``per`` bits of them (a substring within ``per`` bits has its
    prefix within ``per`` bits). None when there are more than ``_MAX_PROBES`` a query."""
    widths = [min(w, prefix) for w in _WIDTHS]
    if sum(sum(math.comb(w, k) for k in range(per + 1)) for w in widths) > _MAX_PROBES:
        return None
    qn, sub, val = [], [], []
    q = np.arange(len(qsubs), dtype=np.int64)
    for j, (width, bits) in enumerate(zip(_WIDTHS, widths, strict=True)):
        masks = _MASK_CACHE.get((bits, per))
        if masks is None:
            masks = _MASK_CACHE[(bits, per)] = _masks(bits, per)
        top = qsubs[:, j] >> np.uint32(width - bits)
        val.append((top[:, None] ^ masks[None, :]).ravel())
        qn.append(np.repeat(q, len(masks)))
        sub.append(np.full(len(masks) * len(qsubs), j, dtype=np.int64))
    return np.concatenate(qn), np.concatenate(sub), np.concatenate(val).astype(np.int64)


@dataclass
class _Block:
    hashes: np.ndarray  # (n, 32) uint8
    keys: np.ndarray  # (n,) int64: the caller's row keys
    prefix: int  # bits of a substring value that index ``starts`` (0: no tables, brute force)
    order: np.ndarray  # (11 * n,) uint32: per substring, rows sorted by the substring's value
    starts: np.ndarray  # (11 * (2**prefix + 1),) uint32: where each prefix's rows begin in ``order``

    @classmethod
    def of(cls, hashes: np.ndarray, keys: np.ndarray, brute_below: int = _BRUTE_BELOW) -> _Block:
        n = len(hashes)
        if n < brute_below:
            empty = np.empty(0, dtype=np.uint32)
            return cls(hashes, keys, 0, empty, empty)
        # about one row a bucket; never wider than the narrowest substring
        prefix = max(8, min(min(_WIDTHS), math.ceil(math.log2(n))))
        buckets = 1 << prefix
        order = np.empty(_SUBSTRINGS * n, dtype=np.uint32)
        starts = np.empty(_SUBSTRINGS * (buckets + 1), dtype=np.uint32)
        words = _words(hashes)
        for j, width in enumerate(_WIDTHS):
            column = _substring(words, j) >> np.uint32(width - prefix)
            order[j * n : (j + 1) * n] = np.argsort(column, kind="stable")
            base = j * (buckets + 1)
            starts[base] = 0
            np.cumsum(np.bincount(column, minlength=buckets), out=starts[base + 1 : base + buckets + 1])
        return cls(hashes, keys, prefix, order, starts)

    @property
    def nbytes(self) -> int:
        return self.hashes.nbytes + self.keys.nbytes + self.order.nbytes + self.starts.nbytes

    def search(
        self, queries: np.ndarray, qsubs: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query number, key, distance) of every row within ``radius`` of one of ``queries`` (a row
        found through several substrings is listed once); ``qsubs``: their substrings."""
        probes = _probes(qsubs, radius // _SUBSTRINGS, self.prefix) if self.prefix else None
        if probes is None:
            return _brute(self.hashes, self.keys, queries, radius)
        n = len(self.keys)
        pq, psub, pval = probes
        at = psub * ((1 << self.prefix) + 1) + pval
        lo = self.starts[at].astype(np.int64)
        counts = self.starts[at + 1].astype(np.int64) - lo
        total = int(counts.sum())
        if total == 0:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, empty
        # the rows of every probed bucket, concatenated: lo[k] .. lo[k] + counts[k] for each probe k
        which = np.repeat(np.arange(len(at)), counts)
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        rows = self.order[lo[which] + offsets + psub[which] * n].astype(np.int64)
        qn = pq[which]
        # np.take, not words[rows]: numpy's 2-D fancy indexing is many times slower at this
        words, qwords = self.hashes.view(np.uint64), queries.view(np.uint64)
        counts8 = np.bitwise_count(np.take(words, rows, axis=0) ^ np.take(qwords, qn, axis=0))
        dist = counts8[:, 0].astype(np.int64) + counts8[:, 1] + counts8[:, 2] + counts8[:, 3]
        keep = dist <= radius
        pairs, first = np.unique(qn[keep] * n + rows[keep], return_index=True)  # few: only the matches
        return pairs // n, self.keys[pairs % n], dist[keep][first]


def _brute(
    hashes: np.ndarray, keys: np.ndarray, queries: np.ndarray, radius: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row compared with every query: the words column by column (a (4, n) array), which numpy
    runs several times faster than summing each row's four words."""
    columns = np.ascontiguousarray(hashes.view(np.uint64).T)  # (4, n)
    qwords = queries.view(np.uint64).T  # (4, q)
    found_q, found_k, found_d = [], [], []
    step = max(1, (1 << 20) // max(1, len(queries)))  # rows a pass: bounded temporary memory
    for start in range(0, len(hashes), step):
        part = columns[:, start : start + step]
        counts = np.bitwise_count(part[:, None, :] ^ qwords[:, :, None])  # (4, q, rows) uint8
        dist = counts[0].astype(np.int64) + counts[1] + counts[2] + counts[3]
        qn, rows = np.nonzero(dist <= radius)
        found_q.append(qn.astype(np.int64))
        found_k.append(keys[start + rows])
        found_d.append(dist[qn, rows])
    if not found_q:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(found_q), np.concatenate(found_k), np.concatenate(found_d)


class HashIndex:
    """Rows of 256-bit hashes, each with an integer key (the caller's row id), searched exactly.

    New rows go to a small buffer searched by brute force (``_BUFFER`` rows cost a fraction of a
    millisecond); a full buffer becomes a block, and blocks are merged as in a log-structured tree (a block
    is merged into the one before it while it is at least half its size), so adding n rows costs
    O(n log n) in all and a look-up searches O(log n) blocks. ``brute_below``: the smallest block given
    tables (tests lower it to exercise the tables on few rows)."""

    def __init__(self, *, brute_below: int = _BRUTE_BELOW) -> None:
        self._brute_below = brute_below
        self._blocks: list[_Block] = []
        self._buffer_hashes: list[np.ndarray] = []
        self._buffer_keys: list[np.ndarray] = []
        self._buffered = 0

    def __len__(self) -> int:
        return sum(len(b.keys) for b in self._blocks) + self._buffered

    @property
    def nbytes(self) -> int:
        """Memory the index holds (hashes, keys, sorted orders, bucket tables)."""
        return sum(b.nbytes for b in self._blocks) + self._buffered * (HASH_BYTES + 8)

    def add(self, hashes: np.ndarray | list[bytes], keys: np.ndarray | list[int]) -> None:
        """Add rows: ``hashes`` (n, 32) uint8 or n 32-byte strings, ``keys`` their n integer keys."""
        array = _as_array(hashes)
        keys_array = np.asarray(keys, dtype=np.int64)
        if len(array) != len(keys_array):
            raise ValueError(f"{len(array)} hashes but {len(keys_array)} keys")
        if not len(array):
            return
        if len(array) >= _BUFFER:  # a bulk load: straight to a block
            self._push(self._block(array, keys_array))
            return
        self._buffer_hashes.append(array)
        self._buffer_keys.append(keys_array)
        self._buffered += len(array)
        if self._buffered >= _BUFFER:
            self._flush()

    def _block(self, hashes: np.ndarray, keys: np.ndarray) -> _Block:
        return _Block.of(hashes, keys, self._brute_below)

    def _flush(self) -> None:
        if self._buffered:
            hashes, keys = self._buffer()
            self._buffer_hashes, self._buffer_keys, self._buffered = [], [], 0
            self._push(self._block(hashes, keys))

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
                self._block(
                    np.concatenate([before.hashes, last.hashes]), np.concatenate([before.keys, last.keys])
                )
            )

    def compact(self) -> None:
        """Merge the buffer and every block into one block."""
        self._flush()
        if len(self._blocks) > 1:
            hashes = np.concatenate([b.hashes for b in self._blocks])
            keys = np.concatenate([b.keys for b in self._blocks])
            self._blocks = [self._block(hashes, keys)]

    def search(self, queries: np.ndarray | list[bytes], radius: int) -> list[list[tuple[int, int]]]:
        """For each query, ``[(key, distance)]`` of every row within ``radius``, nearest first."""
        array = _as_array(queries)
        out: list[list[tuple[int, int]]] = [[] for _ in range(len(array))]
        if not len(array):
            return out
        qsubs = substrings(array)
        found = [block.search(array, qsubs, radius) for block in self._blocks]
        if self._buffered:
            hashes, keys = self._buffer()
            found.append(_brute(hashes, keys, array, radius))
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
