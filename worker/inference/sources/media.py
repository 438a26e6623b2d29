"""What kind of media some bytes are: :mod:`dfscan.media` (the HTTP API sniffs uploads with the same rules)."""

from dfscan.media import SNIFF_BYTES, media_kind, video_container

__all__ = ["SNIFF_BYTES", "media_kind", "video_container"]
