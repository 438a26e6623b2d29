"""All dfscan settings, read from ``DFSCAN_*`` environment variables (or a ``.env`` file).

One flat prefix, one class. Every default is written here once, with the reason for it; so is every
value that is fixed rather than a setting (:data:`FIXED`). docs/settings.md is generated from this
module (``python -m dfscan.docs_reference``).

Retiring a setting: move it to :data:`FIXED` (with its value, why, and what replaces it) and declare it
with :func:`_retired` in the last section of :class:`Settings`. For one release its ``DFSCAN_`` variable
still takes effect, with a warning; then the field goes and the value is a plain constant.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger(__name__)

MiB = 1024 * 1024

CommaList = Annotated[tuple[str, ...], NoDecode]


class Fixed(NamedTuple):
    """A value that is not a setting: the value, why it is what it is, and what sets it instead (a CLI
    flag), if anything."""

    value: Any
    why: str
    instead: str = ""


# Values that were settings until this release and are fixed now: no deployment had a reason to change
# them, and each one was one more thing to read. Their DFSCAN_ variables still work for this release.
FIXED: dict[str, Fixed] = {
    "connect_timeout": Fixed(
        5.0,
        "Seconds to connect to a URL's host. DFSCAN_FETCH_DEADLINE bounds the whole fetch (DNS, connect, "
        "redirects, body) and is the one to change.",
    ),
    "read_timeout": Fixed(
        10.0,
        "Seconds between two reads of a body: a stalled server fails early instead of holding a thread "
        "until DFSCAN_FETCH_DEADLINE.",
    ),
    "decode_timeout": Fixed(
        4.0,
        "CPU seconds one decode may use in a decode child, or 3x that in wall time (only with "
        "DFSCAN_DECODE_PROCESSES > 0): 5x the costliest real image at the 40 Mpx cap (0.8 s); past it the "
        "child is killed and the job fails TOO_LARGE (limit decode_time).",
    ),
    "max_video_pixels": Fixed(
        4096 * 2304,
        "Pixels per video frame, checked from the stream headers and enforced by the decoder (FFmpeg "
        "max_pixels): DCI 4K and UHD fit; frames are scaled to 640 px before judging anyway.",
    ),
    "video_deadline": Fixed(
        60.0,
        "Seconds one video may spend being indexed and decoded before it fails TOO_LARGE (limit "
        "video_time): a bound for hostile files, far above what a video under the byte and length caps needs.",
    ),
    "video_in_flight": Fixed(
        2,
        "Model inputs of one video waiting in the model batcher at a time (it decodes ahead while they "
        "wait). Frames are background work: images go first whatever this is.",
    ),
    "face_detector": Fixed(
        "mtcnn",
        "The face detector, by registered name; mtcnn is the one registered. Its weights ship inside the "
        "dfscan package (worker/inference/weights), and it had the best recall with no false hits. A model version trained on "
        "faces records its detector and is served with it.",
    ),
    "flower_port": Fixed(5555, "Flower's HTTP port (Flower's own default).", "dfscan flower --port"),
    "exporter_port": Fixed(9465, "Port of the queue metrics of `dfscan exporter`.", "dfscan exporter --port"),
    "webhook_retry_base": Fixed(
        5.0,
        "Seconds before the first webhook retry, doubling each attempt up to DFSCAN_WEBHOOK_RETRY_MAX (with "
        "+-20 % jitter); DFSCAN_WEBHOOK_MAX_ATTEMPTS and the max set how long a delivery is tried.",
    ),
    "webhook_poll_interval": Fixed(
        0.2,
        "Longest wait of an idle delivery loop: on Postgres a new event wakes it at once (LISTEN/NOTIFY); "
        "the poll is the fallback for retries and breakers coming due, SQLite and a lost LISTEN connection.",
    ),
    "webhook_min_round_interval": Fixed(
        0.05,
        "Least seconds between the starts of two delivery steps woken early: under load, events and "
        "outcomes gather into one transaction per step instead of one each.",
    ),
}


def _retired(**constraints: Any) -> Any:
    """A field for a retired setting (one in :data:`FIXED`): unset unless its old variable is set."""
    return Field(None, exclude=True, json_schema_extra={"retired": True}, **constraints)


def is_retired(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("retired"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DFSCAN_", env_file=".env", extra="ignore")

    # --- model ---------------------------------------------------------------------------------
    model: str = Field(
        "prithivMLmods/Deep-Fake-Detector-Model",
        description="Checkpoint: a Hugging Face hub id or a local directory. Where the hub cannot be "
        "reached, download a checkpoint elsewhere and point this at its directory.",
    )
    model_revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit) to pin; unset means the default branch."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto picks CUDA when present, else CPU."
    )
    int8: bool = Field(
        False,
        description="CPU only: dynamic int8 quantisation (~1.8x faster, ~99% agreement). Off by default "
        "because a score then depends on the other images in its batch.",
    )
    runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description="auto (default) runs the model with ONNX Runtime on CPU in fp32 and with torch on CUDA "
        "or with DFSCAN_INT8. Why: on CPU, ONNX Runtime computes torch's scores (within 1e-5; same model "
        "version) with about half of torch's CPU seconds for ViT-B, and a warm start skips loading the torch "
        "weights. The first load of a model version exports it (~5-10 s for ViT-B, once) into "
        "DFSCAN_ONNX_CACHE. torch: always torch. onnx: always ONNX Runtime (CPU only; also with DFSCAN_INT8, "
        "version +int8-onnx).",
    )
    onnx_cache: Path | None = Field(
        None,
        description="Directory for ONNX exports (one file per model version) and the weight-digest cache "
        "(digests.json: a local checkpoint's sha256 by path, size and mtime, so a start need not re-read "
        "the weights); unset means $XDG_CACHE_HOME/dfscan/onnx, i.e. ~/.cache/dfscan/onnx.",
    )
    threads: int | None = Field(
        None,
        description="torch threads per process; unset means every core (one inference worker per "
        "machine), and 2 for `dfscan worker` on a CUDA GPU (the GPU does the model's work). Running N worker "
        "processes on one machine? Set cores / N, so they never oversubscribe.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Numerics of the model. auto: fp32 on CPU; on CUDA bf16 autocast where the GPU has native "
        "bf16 (compute capability 8.0 on: A100, H100, L4), else fp16 autocast (V100, T4). The model version "
        "ends in +bf16 or +fp16 unless DFSCAN_SHARE_CACHE_ACROSS_PRECISION, so cached verdicts of one "
        "numerics never answer for another.",
    )
    share_cache_across_precision: bool = Field(
        False,
        description="Leave the +bf16/+fp16 suffix out of the model version, so GPU and CPU workers share "
        "cached verdicts. Set it only after bench/gpu.py measured max |p(bf16) - p(fp32)| within 0.01 on your "
        "GPU and model (docs/deploy.md, GPU host).",
    )
    batch_size: int = Field(
        8,
        ge=1,
        description="Images per forward pass. 4-16 is fastest on CPU. Unset, `dfscan worker` on a CUDA GPU "
        "picks 64-256 from the GPU's memory (docs/deploy.md, GPU host).",
    )
    batch_wait_ms: int = Field(
        20, ge=0, description="Worker: longest wait for a batch to fill before running it anyway."
    )
    threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="p(fake) at or above which a verdict is 'fake', unless the promoted model "
        "version carries its own calibrated threshold.",
    )

    # --- faces -----------------------------------------------------------------------------------
    faces: Literal["auto", "require", "off"] = Field(
        "auto",
        description="What an image is judged on. auto: its faces when any are found (the checkpoints were "
        "trained on face crops), else the whole image; require: no face means done with label "
        "not_applicable and fake_score null; off: the whole image only.",
    )
    face_margin: float = Field(
        0.3,
        ge=0.0,
        le=2.0,
        description="Margin added on each side of a face box, as a fraction of its size, before the square "
        "crop: 0.3 as the DFDC winner cropped its training faces.",
    )
    max_faces: int = Field(
        16,
        ge=1,
        le=64,
        description="At most this many faces per image (per video frame) are judged, largest first; the rest "
        "are counted as over_cap. Each face is one model input: measured (bench/real_faces.py) at about 1 "
        "CPU s per face for a ViT-B on CPU, so 16 bounds a crowd photo near 15 CPU s (32 would cost 27).",
    )
    min_face_px: int = Field(
        24,
        ge=1,
        description="Faces whose shorter side is under this many pixels are not judged (counted as "
        "too_small): 24 px is the smallest size at which the detector found every reference face of "
        "bench/real_faces.py's real photographs (20 px: 87%, 16 px: 42%).",
    )
    min_face_score: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="Detected faces under this detector confidence are not judged (counted as low_score): "
        "on bench/real_faces.py's real photographs every false hit (a lapel pin, a motorbike part) scored "
        "0.82-0.88 and 95% of true faces of 24 px and more scored above 0.9.",
    )

    # --- a second opinion ------------------------------------------------------------------------
    second_model: str | None = Field(
        None,
        description="A second Hugging Face image-classification checkpoint (hub id or local path; labels "
        "mapped by name like DFSCAN_MODEL) judged on the whole image of every still image, beside the "
        "first model. The verdict keeps the first model's label and score and adds second_opinion: "
        "the second score and the combined reading. Unset: no second model. Costs one more model "
        "input per image (bench/second_model.py).",
    )
    second_disagreement: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="When the two models' p(fake) differ by more than this, the combined reading is "
        "'inconclusive' (no combined score); within it, the combined score is their mean. 0.5: 0.8 "
        "beside 0.2 is inconclusive, 0.7 beside 0.4 combines to 0.55.",
    )

    # --- explanations -----------------------------------------------------------------------------
    explain: bool = Field(
        False,
        description="Add a heatmap to every judged region of a still image (gradient x input per ViT "
        "patch, stored as a small grid of floats): one more forward and backward pass per region, "
        "paid only when this is on (`dfscan scan --explain` turns it on for one scan; "
        "bench/explain.py measures it). Torch float32 checkpoints only: ONNX and int8 give none.",
    )

    # --- provenance -----------------------------------------------------------------------------
    provenance: bool = Field(
        True,
        description="Read what every source declares about its origin (C2PA manifest and signature, IPTC "
        "digital source type, EXIF software) and report it as the verdict's provenance, beside p(fake) "
        "and never in it. A file without a manifest costs well under a millisecond (bench/provenance.py).",
    )

    # --- sources (untrusted by default) --------------------------------------------------------
    allowed_roots: CommaList = Field(
        (),
        description="Comma-separated directories a worker may read paths from. Empty: no paths.",
    )
    url_allowlist: CommaList = Field(
        (),
        description="Comma-separated hosts or CIDRs that may be fetched even though they are "
        "internal (e.g. an internal image store). Empty: only public addresses.",
    )
    max_bytes: int = Field(20 * MiB, ge=1, description="Byte cap on one source (body or file).")
    max_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Pixel cap per image, well under Pillow's bomb threshold (~89 Mpx).",
    )
    max_frames: int = Field(1000, ge=1, description="Animations with more frames are refused.")
    previews: bool = Field(
        True,
        description="Keep small JPEGs of what was judged for the review console (an image's preview of at "
        "most 320 px, up to 16 thumbnails of 160 px of a clip's sampled frames; a few KB each), made from the "
        "pixels already decoded. Off: the console shows only media the upload store still holds.",
    )
    decode_memory: int = Field(
        512 * MiB,
        ge=64 * MiB,
        description="Bytes that the image decodes in flight in one process may hold together (decoded "
        "pixels, TIFF tile, RGB result, estimated from the header before decoding); more waits, and one "
        "image that would not fit alone is TOO_LARGE (limit decode_memory). With DFSCAN_DECODE_PROCESSES, "
        "also each decode child's address-space limit (plus 256 MiB). 512 MiB: any one image at the 40 Mpx "
        "cap even without a draft (a float TIFF needs ~370 MiB), and a worker's RSS stays under 1.5 GiB with "
        "16 hostile files in flight.",
    )
    decode_processes: int = Field(
        0,
        ge=0,
        description="Decode child processes (0: decode in the calling thread). The backstop for parser "
        "bugs: a child past its decode deadline (4 s of CPU) is killed, one past DFSCAN_DECODE_MEMORY "
        "fails; both TOO_LARGE. Off by default: a child costs a process and a copy of each image.",
    )
    fetch_deadline: float = Field(
        30.0,
        gt=0,
        description="Seconds for a whole fetch: DNS, connects, redirects and body (FETCH_TIMEOUT past it).",
    )
    max_redirects: int = Field(3, ge=0, description="Redirect hops followed, each checked again.")

    # --- videos (worker/inference/video/decode.py) ------------------------------------------------------
    max_video_bytes: int = Field(
        200 * MiB,
        ge=1,
        description="Byte cap on one video (body or file): a few minutes of phone video at 1080p. Applies "
        "only to bytes sniffed as a video; everything else keeps DFSCAN_MAX_BYTES.",
    )
    max_video_seconds: float = Field(
        600.0,
        gt=0,
        description="Longest video judged, by its header and by its timestamps (VIDEO_TOO_LONG).",
    )
    video_frames: int = Field(
        32,
        ge=1,
        le=256,
        description="Frames sampled per video, spread over its duration (the DFDC winner's 32).",
    )
    video_fps: float | None = Field(
        None,
        gt=0,
        description="Sample this many frames per second instead of DFSCAN_VIDEO_FRAMES (at most 256 a video).",
    )
    # --- near-duplicates (docs/near-duplicates.md) ------------------------------------------------
    near_duplicates: bool = Field(
        True,
        description="Answer a near-duplicate of a verdict the same tenant already has (same model version) "
        "with that verdict instead of judging it. Off: every source is judged; hashes are still stored and "
        "bank matches still reported.",
    )
    near_distance: int = Field(
        31,
        ge=0,
        le=64,
        description="Largest Hamming distance between two PDQ hashes (of 256 bits) that counts as a match: "
        "31 is PDQ's published operating point (the index is exact up to 31 and stays exact, slower, above).",
    )
    hash_quality_floor: int = Field(
        50,
        ge=0,
        le=100,
        description="PDQ quality (0-100) under which a hash is stored but never matched: flat, featureless "
        "images match too much. 50 is ThreatExchange's vPDQ quality threshold.",
    )
    video_match_percent: float = Field(
        80.0,
        ge=0,
        le=100,
        description="vPDQ: share of a video's good frames that must match some frame of the other video "
        "(ThreatExchange's query threshold, 80).",
    )
    # --- storage and broker --------------------------------------------------------------------
    database_url: str = Field(
        "sqlite:///dfscan.db",
        description="SQLAlchemy URL. SQLite for a laptop scan; postgresql+psycopg2://... for the service.",
    )
    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker (Redis).")
    queue_max_depth: int = Field(
        100_000, ge=1, description="Backpressure: submit fails past this many queued messages."
    )
    jobs_per_message: int = Field(
        1,
        ge=1,
        le=64,
        description="Bulk lane: jobs per task message. 1 gives Flower one task per image; 8 cuts Celery's "
        "per-message cost (receive, ack, events) eightfold for backfills. The interactive lane always sends 1.",
    )
    fair_share: bool = Field(
        True,
        description="Bulk lane: each message goes out at its tenant's fair-share priority step (0 for a tenant "
        "with nothing waiting, one more each time its backlog doubles), so one tenant's flood does not delay "
        "another tenant's jobs. Off: one FIFO for every tenant.",
    )
    task_events: bool = Field(
        False,
        description="Celery task events (sent, received, started, succeeded): what Flower's task pages and "
        "rates are made of. Each is a message built and published to Redis, four per image at one image "
        "per message, so they are off unless asked for; a running Flower turns them on in the workers it "
        "sees, and this setting adds the producer's sent events.",
    )
    visibility_timeout: int = Field(
        300,
        ge=1,
        description="Seconds before Redis redelivers an unacknowledged message (kombu's default is 1 h).",
    )
    lease_seconds: int = Field(
        120,
        ge=1,
        description="A claim's lease. A live worker renews the leases of the jobs it holds every lease/3 s; "
        "the sweeper re-sends a running job whose lease ran out (its worker is gone) and a queued job no "
        "broker message names after this long.",
    )
    max_attempts: int = Field(5, ge=1, description="Attempts before a job fails with MAX_ATTEMPTS.")
    sweep_interval: float = Field(30.0, gt=0, description="Seconds between two sweeps.")

    # --- training and the model registry -------------------------------------------------------
    model_store: Path = Field(Path("model-store"), description="Directory for trained model versions.")
    target_fpr: float = Field(
        0.05, gt=0, lt=1, description="Threshold chosen so this share of real images is flagged fake."
    )

    # --- flower --------------------------------------------------------------------------------
    flower_user: str = Field("admin", description="Flower basic-auth user.")
    flower_password: SecretStr = Field(
        SecretStr(""),
        description="Flower basic-auth password; Flower refuses to start without one, or with a blank one. "
        "Printable ASCII; commas are fine.",
    )
    flower_address: str = Field(
        "127.0.0.1",
        description="Address Flower listens on. Loopback by default: Flower speaks plain HTTP with basic "
        "auth, so expose it through a TLS proxy; 0.0.0.0 (or ::) listens on every interface, as in a "
        "container whose port is published.",
    )

    # --- the review console (/ui of `dfscan api`) ----------------------------------------------
    console_secret: SecretStr = Field(
        SecretStr(""),
        description="Key that signs the review console's session cookies (and their CSRF tokens). Give "
        "every `dfscan api` replica the same value. Blank: each process makes a random one, so a sign-in "
        "lasts until that process restarts and holds on that replica only.",
    )
    console_session_hours: float = Field(
        8.0,
        gt=0,
        le=24 * 30,
        description="How long a console sign-in lasts (a working shift). The key is checked again on "
        "every request: revoking it ends its sessions at once.",
    )

    # --- metrics and the scaling signal ------------------------------------------------------
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Inference worker: serve Prometheus metrics on this port. Unset or 0: off (several "
        "workers on one host would collide on a fixed default; compose and k8s set 9464).",
    )
    metrics_addr: str = Field(
        "127.0.0.1",
        description="Address the worker metrics and `dfscan exporter` bind to. Loopback by default: set "
        "0.0.0.0 in a container so Prometheus can scrape it.",
    )
    # --- webhooks ------------------------------------------------------------------------------
    webhook_secret: SecretStr = Field(
        SecretStr(""),
        description="Key of the HMAC-SHA256 signature on every webhook (X-Dfscan-Signature). Deliveries "
        "wait (and are retried) until it is set; a blank or space-padded value is refused at start.",
    )
    webhook_allowlist: CommaList = Field(
        (),
        description="Comma-separated hosts or CIDRs a callback URL may reach although they are internal. "
        "Separate from DFSCAN_URL_ALLOWLIST: an image store that may be fetched is not a place to POST to.",
    )
    webhook_timeout: float = Field(
        10.0, gt=0, description="Seconds for one webhook POST (connect, send, answer)."
    )
    webhook_max_response_bytes: int = Field(
        65536, ge=1, description="Bytes of a receiver's answer read at most; the rest is ignored."
    )
    webhook_retry_max: float = Field(
        900.0, gt=0, description="Longest wait between two delivery attempts (15 min)."
    )
    webhook_max_attempts: int = Field(
        20,
        ge=1,
        description="Attempts before a delivery is given up (state failed; `dfscan webhooks redeliver` "
        "revives it). 20 with the defaults above spans ~3 hours.",
    )
    webhook_retention_days: float = Field(
        30.0,
        ge=0,
        description="The sweeper deletes delivered and given-up webhook events this many days after "
        "their last change (pending ones never). 0 keeps them forever. ~1.1 KB per event: 30 days of "
        "1M events a day is ~33 GB, so lower it at that volume.",
    )

    # --- the HTTP API (`dfscan api`) -----------------------------------------------------------------
    upload_store: Path = Field(
        Path("uploads"),
        description="Directory of uploaded bytes, named by their SHA-256 (a volume shared by the API and the "
        "workers in compose and Kubernetes). Workers read it by digest only: it is not an allowed root.",
    )
    upload_retention_hours: float = Field(
        24.0,
        ge=0,
        description="The sweeper deletes uploaded bytes this many hours after their last upload (verdicts "
        "stay); uploads of jobs still queued or running are kept. 0 keeps them forever.",
    )
    api_max_sources: int = Field(
        1000, ge=1, description="Sources (URLs or files) in one POST /v1/scans: bigger batches are split."
    )
    api_max_files: int = Field(
        16,
        ge=1,
        description="File parts in one multipart POST /v1/scans; each is capped by DFSCAN_MAX_BYTES "
        "(images) or DFSCAN_MAX_VIDEO_BYTES (videos).",
    )
    api_max_json_bytes: int = Field(
        MiB, ge=1024, description="Byte cap on a JSON request body (413 TOO_LARGE past it, unread)."
    )
    api_body_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a client has to send a whole request body; a slower one gets 408 and the "
        "connection closes (a slow client cannot hold a connection slot for ever).",
    )
    api_rate_limit: str = Field(
        "50/second",
        description="Requests per API key, in the `limits` library's notation (`50/second`, "
        "`1000/minute`), counted in Redis so every API replica shares it (429 RATE_LIMITED past it).",
    )
    api_max_outstanding: int = Field(
        10_000,
        ge=1,
        description="Jobs of one API key queued or running at once; a submission that would pass it gets "
        "429 RATE_LIMITED. Keeps one client from filling the queue in front of everyone else.",
    )
    api_max_connections: int = Field(
        1000,
        ge=1,
        description="Concurrent connections one `dfscan api` process serves; past it new ones get 503.",
    )

    # --- retired: read for this release only, with a warning (values and reasons in FIXED) ---------
    connect_timeout: float | None = _retired(gt=0)
    read_timeout: float | None = _retired(gt=0)
    decode_timeout: float | None = _retired(gt=0)
    max_video_pixels: int | None = _retired(ge=1)
    video_deadline: float | None = _retired(gt=0)
    video_in_flight: int | None = _retired(ge=1, le=64)
    face_detector: str | None = _retired()
    flower_port: int | None = _retired(ge=1, le=65535)
    exporter_port: int | None = _retired(ge=1, le=65535)
    webhook_retry_base: float | None = _retired(gt=0)
    webhook_poll_interval: float | None = _retired(gt=0)
    webhook_min_round_interval: float | None = _retired(ge=0)

    def fixed(self, name: str) -> Any:
        """The value of ``FIXED[name]``, or, for this release, its retired ``DFSCAN_`` variable if set."""
        value = getattr(self, name) if name in type(self).model_fields else None
        return FIXED[name].value if value is None else value

    @model_validator(mode="after")
    def _warn_retired(self) -> Settings:
        for name in sorted(self.model_fields_set & RETIRED.keys()):
            fixed = FIXED[name]
            then = f"`{fixed.instead}` sets it" if fixed.instead else f"it is fixed at {fixed.value!r}"
            log.warning(
                "DFSCAN_%s is retired: it still takes effect in this release; from the next one, %s. %s",
                name.upper(),
                then,
                fixed.why,
            )
        return self

    @field_validator("allowed_roots", "url_allowlist", "webhook_allowlist", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value


# The settings a user sets (the docs' table, `dfscan config`), and the retired ones.
CURRENT: dict[str, FieldInfo] = {n: f for n, f in Settings.model_fields.items() if not is_retired(f)}
RETIRED: dict[str, FieldInfo] = {n: f for n, f in Settings.model_fields.items() if is_retired(f)}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once. Tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()
