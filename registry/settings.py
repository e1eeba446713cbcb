"""One settings class, used by the api, the worker and the migrations.

Programs read it once (``Settings()``: environment variables and ``.env``) and pass the
object on; nothing below the front door reads the environment itself."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_weights_dir() -> Path:
    return Path("~/.cache/clipfit/weights").expanduser()


class Settings(BaseSettings):
    """Environment variables ``CLIPFIT_<NAME>`` (or a ``.env`` file) override each field."""

    model_config = SettingsConfigDict(env_prefix="CLIPFIT_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="SQLite file and broker files live here")
    database_url: str = Field("", description="SQLAlchemy URL; default: SQLite in data_dir")
    broker_url: str = Field("", description="Celery broker; default: SQLite in data_dir")
    weights_dir: Path = Field(default_factory=_default_weights_dir,
                              description="model weights: download cache and clipfit-mini")
    base_models: str = Field("clipfit-mini,clipfit-tiny",
                             description="comma-separated allow-list of model specs")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    max_request_bytes: int = Field(200 * 1024 * 1024, ge=1, description="bytes per request "
                                   "body (uploads, classify); larger answers 413")
    max_images: int = Field(5000, ge=1, description="images per job, dataset or classify "
                            "request")
    max_classes: int = Field(1000, ge=2, description="classes per job or request")
    max_image_pixels: int = Field(40_000_000, ge=1, description="pixels per image (width x "
                                  "height); larger images are refused before decoding")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="bytes per image file "
                                 "(uploaded, in a zip once decompressed, or to classify); zip "
                                 "members are decompressed no further than this")
    max_archive_members: int = Field(10_000, ge=1, description="entries per uploaded zip "
                                     "(folders included)")
    max_epochs: int = Field(200, ge=1, description="epochs a job may ask for (auto values "
                            "are capped to it)")
    job_timeout_seconds: int = Field(6 * 3600, ge=1, description="a training task is "
                                     "stopped after this long (Celery's hard time limit)")
    visibility_timeout_seconds: int = Field(
        0, description="broker redelivery delay for unacknowledged jobs; 0: job timeout + 1 h")
    progress_interval_seconds: float = Field(2.0, gt=0, description="how often a training "
                                             "job records its progress")
    heartbeat_seconds: float = Field(5.0, gt=0, description="a training worker's heartbeat")
    stale_after_seconds: float = Field(60.0, gt=0, description="a running job whose heartbeat "
                                       "is older than this has lost its worker")
    requeue_after_seconds: float = Field(60.0, gt=0, description="a queued job with no message "
                                         "in the broker is sent again after this long")
    max_attempts: int = Field(3, ge=1, description="deliveries of a job whose worker keeps "
                              "dying, before it is failed")
    reconcile_interval_seconds: float = Field(10.0, gt=0, description="how often the "
                                              "reconciler compares the database and the queue")
    webhook_interval_seconds: float = Field(1.0, gt=0, description="how often the workers "
                                            "send due webhook deliveries")
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="a receiver must answer "
                                           "within this long")
    webhook_retry_seconds: float = Field(10.0, gt=0, description="the first retry's delay; it "
                                         "doubles each attempt, up to an hour")
    webhook_max_attempts: int = Field(12, ge=1, description="attempts before a delivery is "
                                      "marked failed (it can still be redelivered by hand)")
    webhook_allow_private: bool = Field(False, description="allow webhook URLs on loopback, "
                                        "private and link-local addresses (a receiver on the "
                                        "same network); off, such URLs are refused (SSRF)")
    auth: bool = Field(True, description="require API keys; off only for a trusted network "
                       "(every caller is then the default tenant's admin)")
    bootstrap_admin_key_file: Path | None = Field(
        None, description="a file holding the first admin key (one line, 'cfk_' and 32 or "
        "more random URL-safe characters; a Docker secret works): stored (hashed) by "
        "'clipfit serve' on a database with no key, instead of printing a new one")
    open_docs: bool = Field(True, description="/docs and /openapi.json without a key")
    open_metrics: bool = Field(False, description="/metrics without a key (else an admin "
                               "key: it counts every tenant's jobs)")
    rate_limit: str = Field("50/second", description="requests per API key, in the limits "
                            "library's notation ('50/second', '1000/minute'); empty: none")
    upload_bytes_per_day: int = Field(20 * 1024**3, ge=0,
                                      description="uploaded bytes per API key and day; 0: none")
    max_active_jobs: int = Field(20, ge=0, description="queued + running jobs per tenant; "
                                 "0: none")
    max_adapters: int = Field(1000, ge=0, description="stored adapters per tenant (counting "
                              "jobs that will make one); 0: none")
    blob_url: str = Field("", description="where image, delta and result bytes live: "
                          "'' (default: the folder blobs/ in data_dir), file:///a/folder, "
                          "s3://bucket/prefix (any S3-compatible store; endpoint and "
                          "credentials below or AWS_* variables), or 'database' (in the "
                          "database, as before the blob store)")
    s3_endpoint_url: str = Field("", description="the S3 API's address for s3:// blob URLs "
                                 "(MinIO, SeaweedFS, Ceph...); empty: AWS, or AWS_ENDPOINT_URL")
    s3_region: str = Field("", description="the bucket's region; empty: AWS_REGION or "
                           "us-east-1")
    s3_access_key_id: str = Field("", description="empty: boto3's usual credential chain "
                                  "(AWS_ACCESS_KEY_ID, ~/.aws, an instance role)")
    s3_secret_access_key: SecretStr = Field(SecretStr(""), description="with "
                                            "s3_access_key_id")
    blob_gc_grace_hours: float = Field(24.0, ge=0, description="a blob nothing names is "
                                       "deleted from the store only once it has been "
                                       "unnamed and unwritten this long (longer than any "
                                       "backup of the database takes)")
    blob_gc_interval_seconds: float = Field(3600.0, gt=0, description="how often the workers "
                                            "collect unnamed blobs")
    capture_bytes_per_tenant: int = Field(
        1024**3, ge=0, description="bytes of captured classify images (kept for review) per "
        "tenant; beyond it a capture is skipped and counted, never an error to classify; "
        "0: none")
    capture_queue_mb: float = Field(64.0, gt=0, description="captured images waiting to be "
                                    "written, per API process; beyond it captures are dropped "
                                    "and counted")
    drift_window_minutes: int = Field(60, ge=1, le=30 * 24 * 60, description="the window "
                                      "the drift check reads (in whole hours: those it "
                                      "overlaps); an adapter's adapter.drift event is sent "
                                      "at most once per window")
    drift_min_predictions: int = Field(100, ge=1, description="answers an adapter must have "
                                       "given in the window before its drift is judged")
    drift_factor: float = Field(3.0, gt=0, description="adapter.drift is sent when the "
                                "window's share of 'unknown' (or of low-confidence) answers "
                                "exceeds this times the adapter's held-out share (at least "
                                "0.01)")
    key_cache_seconds: float = Field(30.0, gt=0, description="an API key, once checked, is "
                                     "trusted this long without the database (revocation "
                                     "takes effect within it)")
    idempotency_ttl_seconds: int = Field(24 * 3600, ge=1,
                                         description="how long an Idempotency-Key is kept")
    delta_cache_size: int = Field(64, ge=1, description="deltas kept in memory per API process")
    batching: bool = Field(True, description="merge concurrent classification requests into "
                           "batches; false: one request at a time, its delta swapped into "
                           "the model (the path before batching, kept for comparison)")
    batch_max_size: int = Field(32, ge=1, le=4096, description="images per forward pass at "
                                "most (a larger request is split)")
    batch_max_wait_ms: float = Field(5.0, ge=0, le=1000, description="how long a batch waits "
                                     "to fill after its oldest image arrived")
    batch_queue_images: int = Field(1024, ge=1, description="images waiting for the model at "
                                    "most, per base model; beyond it classify answers 503 with "
                                    "Retry-After")
    resident_delta_mb: float = Field(64.0, gt=0, description="memory per base model for the "
                                     "stacked LayerNorm table of resident deltas (about "
                                     "160 KB per ViT-B delta)")
    predict_batch_size: int = Field(0, ge=0, le=4096, description="images per forward pass "
                                    "of a batch prediction (worker side); 0: "
                                    "CLIPFIT_BATCH_MAX_SIZE")
    predict_chunk_size: int = Field(256, ge=1, le=100_000, description="a batch prediction "
                                    "records its answers every this many images: a worker "
                                    "that dies loses at most one chunk's work")

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or \
            f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite3').resolve()}"

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'clipfit.sqlite3').resolve()}"

    @property
    def allowed_base_models(self) -> list[str]:
        return [m.strip() for m in self.base_models.split(",") if m.strip()]

