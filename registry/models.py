"""SQLAlchemy 2 models. Images and delta weights are blobs deduplicated by sha256."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON}  # noqa: RUF012


class JobStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINISHED = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)
JOB_KINDS = ("train", "predict")  # a training job, or a batch prediction (``Prediction``)


class Blob(Base):
    """Content-addressed bytes: uploaded images and delta weights. ``data`` holds the bytes
    when they live in the database (CLIPFIT_BLOB_URL=database, or rows stored before the
    blob store and not yet moved); NULL when they are in the blob store. ``touched_at``: when
    a writer last stored or named it (the garbage collector spares younger blobs)."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int]
    data: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    touched_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


DEFAULT_TENANT = "default"  # existing rows' tenant (migration 0002); the embedded admin's
SCOPES = ("admin", "train", "classify", "read")


class Tenant(Base):
    """A project or organization: it owns datasets, jobs, adapters and idempotency keys."""

    __tablename__ = "tenants"
    __table_args__ = (UniqueConstraint("name", name="uq_tenants_name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A key is shown once; only its sha256 is kept (keys are 256 random bits: a fast hash
    is enough), with a short prefix for people to tell keys apart."""

    __tablename__ = "api_keys"
    __table_args__ = (UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", name="fk_api_keys_tenant"))
    name: Mapped[str | None] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", name="fk_idempotency_tenant"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", name="fk_idempotency_job", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """A labelled image set, never changed once stored: more images make a new version (a
    row whose ``parent_id`` is this one and whose images are this one's plus the new ones,
    naming the same blobs)."""

    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", name="fk_datasets_tenant"),
                                           index=True)
    classnames: Mapped[list[str]]
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", name="fk_datasets_parent"), index=True)
    version: Mapped[int] = mapped_column(default=1)  # its parent's + 1
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    images: Mapped[list[DatasetImage]] = relationship(
        back_populates="dataset", cascade="all, delete-orphan", order_by="DatasetImage.position")


class DatasetImage(Base):
    __tablename__ = "dataset_images"
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"),
                                            primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True)
    blob_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    label: Mapped[int]
    filename: Mapped[str] = mapped_column(String(512))
    dataset: Mapped[Dataset] = relationship(back_populates="images")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", name="fk_jobs_tenant"),
                                           index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    # "train" (the training jobs of /v1/jobs) or "predict" (a batch prediction of
    # /v1/predictions: its own fields in ``predictions``, the lifecycle here, shared)
    kind: Mapped[str] = mapped_column(String(16), default="train", server_default="train")
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))  # None: predict
    base_model: Mapped[str] = mapped_column(String(500))
    templates: Mapped[list[str]]
    hyperparameters: Mapped[dict[str, Any]]  # the training spec, auto values resolved
    auto: Mapped[list[str] | None] = mapped_column(JSON)  # the fields given as "auto"
    parent_adapter_id: Mapped[str | None] = mapped_column(String(32))  # the warm start's
    # a retrain (service/retrain.py): the lineage whose benchmark images it leaves out, how
    # many there were, what it took from the captures and what promotion is asked for
    retrain: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    attempts: Mapped[int] = mapped_column(default=0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None]
    heartbeat_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]  # last sent to the queue (the reconciler resends)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    dataset: Mapped[Dataset | None] = relationship()
    adapter: Mapped[Adapter | None] = relationship(back_populates="job")

    @property
    def adapter_id(self) -> str | None:
        return self.adapter.id if self.adapter is not None else None


class JobCheckpoint(Base):
    """A running job's last checkpoint (one per job, replaced each epoch)."""

    __tablename__ = "job_checkpoints"
    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", name="fk_checkpoints_job", ondelete="CASCADE"), primary_key=True)
    attempt: Mapped[int]
    epoch: Mapped[int]
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Lease(Base):
    """A named lease: one holder at a time until it expires (the reconciler's)."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]


class JobEvent(Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Adapter(Base):
    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("job_id"),
                      UniqueConstraint("tenant_id", "name", "version",
                                       name="uq_adapters_name_version"))
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", name="fk_adapters_tenant"),
                                           index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    name: Mapped[str | None] = mapped_column(String(200))
    version: Mapped[int | None]  # 1, 2, ... per (tenant, name); None without a name
    base_model: Mapped[str] = mapped_column(String(500))
    base_fingerprint: Mapped[str] = mapped_column(String(64))
    classnames: Mapped[list[str]]
    templates: Mapped[list[str]]
    metrics: Mapped[dict[str, Any]]
    config: Mapped[dict[str, Any]]  # adapter_config.json, as written
    trainable_count: Mapped[int]
    weights_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    size_bytes: Mapped[int]
    # the dataset version its job trained on (None: imported), and how many images of its
    # lineage's benchmark set were kept out of training (None: not a retrain)
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", name="fk_adapters_dataset"))
    benchmark_images: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    job: Mapped[Job | None] = relationship(back_populates="adapter")

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The training spec it was trained with (stored once, in its config)."""
        return self.config.get("hyperparameters", {})


class AdapterName(Base):
    """The last version number given to a name: versions are never reused, even after the
    adapter that had one is deleted (``name@3`` never changes meaning)."""

    __tablename__ = "adapter_names"
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", name="fk_adapter_names_tenant"), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_version: Mapped[int]


class AdapterAlias(Base):
    """``name@alias``: one version of a named adapter, moved in one transaction."""

    __tablename__ = "adapter_aliases"
    __table_args__ = (UniqueConstraint("tenant_id", "name", "alias",
                                       name="uq_adapter_aliases_name_alias"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", name="fk_aliases_tenant"),
                                           index=True)
    name: Mapped[str] = mapped_column(String(200))
    alias: Mapped[str] = mapped_column(String(40))
    adapter_id: Mapped[str] = mapped_column(ForeignKey("adapters.id", name="fk_aliases_adapter"),
                                            index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


WEBHOOK_EVENTS = ("job.succeeded", "job.failed", "job.cancelled", "adapter.deleted",
                  "adapter.drift", "adapter.version_ready")


class WebhookEndpoint(Base):
    """A tenant's receiver of signed event notifications (Standard Webhooks)."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", name="fk_webhooks_tenant", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(100))  # whsec_<base64>: shown once, at creation
    events: Mapped[list[str]]
    description: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint: an outbox row written in the transaction that made the
    event, sent by the workers until the receiver answers 2xx or the attempts run out."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True,
                                    default=lambda: f"msg_{new_id()}")  # the webhook-id
    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoints.id", name="fk_deliveries_endpoint", ondelete="CASCADE"),
        index=True)
    event_type: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]]  # the body sent: {"type", "timestamp", "data"}
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending/succeeded/failed
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]


CAPTURE_STATES = ("pending", "labelled", "discarded")
CAPTURE_RULES = ("unknown", "below_confidence", "classes", "sample_rate")  # checked in order


class CaptureSetting(Base):
    """Which classified images of an adapter lineage (its name, or the id of an unnamed
    adapter) are kept for review: the rules, their caps and the retention time."""

    __tablename__ = "capture_settings"
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", name="fk_capture_settings_tenant", ondelete="CASCADE"),
        primary_key=True)
    lineage: Mapped[str] = mapped_column(String(200), primary_key=True)
    alias: Mapped[str | None] = mapped_column(String(40))  # only name@alias requests
    sample_rate: Mapped[float | None]
    below_confidence: Mapped[float | None]
    unknown: Mapped[bool] = mapped_column(default=False)
    classes: Mapped[list[str] | None] = mapped_column(JSON)
    max_per_hour: Mapped[int | None]
    max_per_day: Mapped[int | None]
    retention_days: Mapped[int]
    retrain_after: Mapped[int | None]  # labelled captures waiting that start a retrain
    promote: Mapped[str] = mapped_column(String(10), default="manual")  # of such a retrain
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Capture(Base):
    """A classified image kept for review: the image (a blob), the answer of the version that
    gave it, the rule that kept it, and the reviewer's label."""

    __tablename__ = "captures"
    __table_args__ = (Index("ix_captures_lineage_created", "tenant_id", "lineage",
                            "created_at"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", name="fk_captures_tenant", ondelete="CASCADE"))
    lineage: Mapped[str] = mapped_column(String(200))
    adapter_id: Mapped[str] = mapped_column(String(32))  # the version that answered
    blob_sha256: Mapped[str] = mapped_column(
        ForeignKey("blobs.sha256", name="fk_captures_blob"), index=True)
    size_bytes: Mapped[int]
    media_type: Mapped[str] = mapped_column(String(50))
    filename: Mapped[str] = mapped_column(String(512))
    predicted: Mapped[str] = mapped_column(String(200))  # the answer's label ("unknown" too)
    confidence: Mapped[float]  # the top class's probability
    unknown: Mapped[bool]
    top_k: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    rule: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    label: Mapped[str | None] = mapped_column(String(200))
    new_class: Mapped[bool] = mapped_column(default=False)
    labelled_at: Mapped[datetime | None]
    # a retrain took it: into this dataset version, or (benchmark) into the lineage's
    # benchmark set; a labelled capture with neither waits for the next retrain
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", name="fk_captures_dataset"))
    benchmark: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


BENCHMARK_SOURCES = ("held_out", "capture")


class BenchmarkImage(Base):
    """One image of a lineage's benchmark set: held out for good, never trained on by a
    retrain of the lineage (the first version's held-out split, then every fifth labelled
    capture). Positions count from 0 and never change; a job records how many it left out."""

    __tablename__ = "benchmark_images"
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", name="fk_benchmark_images_tenant", ondelete="CASCADE"),
        primary_key=True)
    lineage: Mapped[str] = mapped_column(String(200), primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    blob_sha256: Mapped[str] = mapped_column(
        ForeignKey("blobs.sha256", name="fk_benchmark_images_blob"), index=True)
    label: Mapped[str] = mapped_column(String(200))  # the class name
    source: Mapped[str] = mapped_column(String(10))  # held_out or capture
    capture_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


HISTOGRAM_BUCKETS = 10  # served_stats.histogram: top probabilities in [0, 0.1), ..., [0.9, 1]


class ServedStats(Base):
    """What one adapter answered in one hour (UTC), summed over every API process: each
    process adds its counts (``registry.served.add_served``). No foreign keys: the counts of
    an adapter deleted meanwhile are kept until they age out, like every row (90 days)."""

    __tablename__ = "served_stats"
    tenant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    adapter_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True, index=True)  # truncated
    predictions: Mapped[int] = mapped_column(default=0)
    unknown: Mapped[int] = mapped_column(default=0)
    low_confidence: Mapped[int] = mapped_column(default=0)
    captured: Mapped[int] = mapped_column(default=0)  # queued for capture
    histogram: Mapped[list[int]] = mapped_column(JSON)  # HISTOGRAM_BUCKETS counts


class DriftAlert(Base):
    """When an adapter's ``adapter.drift`` event was last put in the outbox: at most one per
    drift window."""

    __tablename__ = "drift_alerts"
    adapter_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32))
    fired_at: Mapped[datetime] = mapped_column(index=True)


class Prediction(Base):
    """A batch prediction: what to classify with and how (the options of /v1/classify,
    resolved when it was submitted), its counts and its result files. Its lifecycle (status,
    attempts, heartbeat, cancellation, progress, events) is its job's: the ``jobs`` row of
    kind "predict" with the same id."""

    __tablename__ = "predictions"
    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", name="fk_predictions_job", ondelete="CASCADE"), primary_key=True)
    adapter_id: Mapped[str | None] = mapped_column(String(32))  # None: zero-shot
    adapter_ref: Mapped[str | None] = mapped_column(String(300))  # as given (name@alias...)
    classnames: Mapped[list[str]]  # what it classifies among
    top_k: Mapped[int]
    temperature: Mapped[float]  # 1: none (calibration_for chose it)
    threshold: Mapped[float | None]
    source: Mapped[str] = mapped_column(String(10))  # zip, dataset or images
    dataset_id: Mapped[str | None] = mapped_column(String(32))  # source "dataset": which
    images: Mapped[int]
    chunk_size: Mapped[int]  # images per recorded chunk (fixed at submission: resumable)
    classified: Mapped[int] = mapped_column(default=0)
    unknown: Mapped[int] = mapped_column(default=0)  # answered "unknown" (below threshold)
    unreadable: Mapped[int] = mapped_column(default=0)  # could not be read when it ran
    results_jsonl_sha256: Mapped[str | None] = mapped_column(
        ForeignKey("blobs.sha256", name="fk_predictions_jsonl_blob"), index=True)
    results_csv_sha256: Mapped[str | None] = mapped_column(
        ForeignKey("blobs.sha256", name="fk_predictions_csv_blob"), index=True)
    results_bytes: Mapped[int | None]  # of the JSON Lines file
    job: Mapped[Job] = relationship()


class PredictionImage(Base):
    """One image a batch prediction classifies (a blob), in order; kept until the
    prediction ends (its result rows then name it)."""

    __tablename__ = "prediction_images"
    job_id: Mapped[str] = mapped_column(
        ForeignKey("predictions.job_id", name="fk_prediction_images_prediction",
                   ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    blob_sha256: Mapped[str] = mapped_column(
        ForeignKey("blobs.sha256", name="fk_prediction_images_blob"), index=True)
    filename: Mapped[str] = mapped_column(String(512))


class PredictionChunk(Base):
    """The answers of one finished chunk of a running batch prediction (images
    ``chunk * chunk_size`` onwards): a redelivered prediction skips the chunks recorded
    here. Removed when the prediction ends (the result files hold them)."""

    __tablename__ = "prediction_chunks"
    job_id: Mapped[str] = mapped_column(
        ForeignKey("predictions.job_id", name="fk_prediction_chunks_prediction",
                   ondelete="CASCADE"), primary_key=True)
    chunk: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    attempt: Mapped[int]
    rows: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
