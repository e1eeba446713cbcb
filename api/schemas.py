"""Response models (XPublic / XsPublic) and cursor encoding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

from fastapi import UploadFile
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
)

from clipfit_core.config import AUTO, AUTO_FIELDS, TrainConfig, input_name
from registry.models import JobStatus

# The database keeps naive UTC; answers say so (RFC 3339: "2026-11-29T06:52:18Z").
Timestamp = Annotated[datetime, AfterValidator(
    lambda t: t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC))]


class JobFormBase(BaseModel):
    """The parts of a job submission that are not hyperparameters."""

    images: list[UploadFile] | None = Field(None, description="training images")
    labels: list[str] | None = Field(None, description="one class name per image")
    dataset: UploadFile | None = Field(
        None, description="a zip: one folder per class, or manifest.csv of path,label rows")
    classes: str | None = Field(None, description="comma-separated class order "
                                "(default: the sorted class names)")
    base_model: str | None = Field(None, description="one of the allowed base models "
                                   "(default: the first)")
    name: str | None = Field(None, max_length=200)
    dataset_id: str | None = Field(None, max_length=32, description="train on a stored "
                                   "dataset (/v1/datasets) instead of uploading images")
    parent_adapter_id: str | None = Field(
        None, max_length=300, description="warm start: begin from this adapter's values (its "
        "id, name@VERSION or name@alias; the same base model; new classes allowed)")

    LISTS: ClassVar[tuple[str, ...]] = ("images", "labels")

    @classmethod
    def field_keys(cls) -> list[str]:
        """The form's keys as sent (aliases such as ``lambda`` and ``template``)."""
        return [f.alias or name for name, f in cls.model_fields.items()]

    def class_list(self) -> list[str] | None:
        """``classes`` split at commas (each name trimmed), or None when not given."""
        return [c.strip() for c in self.classes.split(",")] if self.classes else None

    def train_values(self) -> dict[str, Any]:
        """The spec's exposed fields as sent; AUTO_FIELDS may be ``"auto"``."""
        return {f.name: getattr(self, f.name) for f in TrainConfig.exposed_fields()}

    def train_config(self) -> TrainConfig:
        """The training spec, ``auto`` values at their defaults until the upload is read
        (raises ValueError naming every bad value)."""
        values = self.train_values()
        return TrainConfig(**{k: TrainConfig.__dataclass_fields__[k].default if v == AUTO
                              else v for k, v in values.items()})


_JSON_SCHEMA_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum",
                       "lt": "exclusiveMaximum"}


def _form_field(f) -> tuple[type, object]:
    """A pydantic field for one exposed field of the training spec: its default, bounds,
    help and public name come from the spec and nowhere else. The bounds are published in
    the schema and checked by the spec itself (``JobFormBase.train_config``), so that a
    request's out-of-bounds values are reported together with all its other problems."""
    alias = input_name(f)
    bounds = {_JSON_SCHEMA_BOUNDS[k]: v for k, v in f.metadata["bounds"].items()}
    kind, help_ = type(f.default), f.metadata["help"]
    if f.name in AUTO_FIELDS:
        kind, help_ = kind | Literal["auto"], f"{help_}; or auto (see README)"
    return kind, Field(f.default, description=help_, json_schema_extra=bounds or None,
                       **({"alias": alias} if alias != f.name else {}))


JobCreateForm = create_model(
    "JobCreateForm", __base__=JobFormBase, __doc__="A training job (multipart form).",
    **{f.name: _form_field(f) for f in TrainConfig.exposed_fields()})


_DEFAULT_HYPERPARAMETERS = {k: v for k, v in TrainConfig().to_dict().items() if k != "templates"}


JobStatusName = Literal[tuple(s.value for s in JobStatus)]  # queued, running, ...


class RetrainPublic(BaseModel):
    """What a retrain took, and what it leaves out of training."""

    lineage: str = Field(description="the name whose benchmark set it leaves out")
    benchmark_images: int = Field(description="the size of the lineage's benchmark set when "
                                  "the job was made: those images are not trained on")
    added: int = Field(description="labelled captures added to training (in dataset_id, a "
                       "new dataset version)")
    benchmarked: int = Field(description="labelled captures set aside into the benchmark set "
                             "instead (every fifth of the lineage)")
    held_out: int = Field(description="the parent's held-out images put into the benchmark "
                          "set (the lineage's first retrain only)")
    promote: Literal["manual", "auto"] = Field(description="what promotion of the new "
                                               "version may do")
    alias: str | None = Field(None, description="the alias promotion would move")
    trigger: Literal["request", "labels"] = Field(
        description="POST /v1/adapters/{ref}/retrain, or the capture setting retrain_after")
    continues: str | None = Field(None, description="a failed or cancelled retrain whose "
                                  "dataset version this one builds on")


class JobPublic(BaseModel):
    id: str
    name: str | None
    status: JobStatusName
    base_model: str
    templates: list[str]
    hyperparameters: dict[str, Any] = Field(description="the training spec, auto values "
                                            "resolved")
    auto: list[str] | None = Field(None, description="the hyperparameters given as auto")
    parent_adapter_id: str | None = Field(None, description="the warm start's adapter")
    dataset_id: str = Field(description="the dataset (version) it trains on")
    retrain: RetrainPublic | None = Field(None, description="a retrain's dataset version "
                                          "counts and benchmark set (null: not a retrain)")
    attempts: int
    cancel_requested: bool
    progress: dict[str, Any] | None
    error: str | None
    adapter_id: str | None
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [{
        "id": "3fc4e2c00c7b42dd9066b0cdadbfc31c", "name": "pets v1", "status": "running",
        "base_model": "ViT-B-16:openai", "templates": ["a photo of a {}, a type of pet."],
        "hyperparameters": _DEFAULT_HYPERPARAMETERS,
        "dataset_id": "5d0e3f0a9b1c4c0e8f2a6b7c8d9e0f1a",
        "attempts": 1, "cancel_requested": False,
        "progress": {"epoch": 3, "epochs": 10, "step": 12, "total_steps": 40, "loss": 0.8123,
                     "lr": 0.0018, "images_per_sec": 95.2, "eta_seconds": 9.4},
        "error": None, "adapter_id": None, "created_at": "2026-11-29T06:52:18",
        "started_at": "2026-11-29T06:52:19", "finished_at": None}]})


class JobsPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    data: list[JobPublic]
    next_cursor: str | None


class EventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    kind: str
    payload: dict[str, Any]
    created_at: Timestamp


class EventsPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    data: list[EventPublic]
    next_cursor: str | None


class AdapterPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str | None
    job_id: str | None
    version: int | None = Field(None, description="1, 2, ... per name (None: unnamed)")
    base_model: str
    base_fingerprint: str
    classnames: list[str]
    templates: list[str]
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any]
    trainable_count: int
    size_bytes: int
    sha256: str = Field(validation_alias=AliasChoices("weights_sha256", "sha256"))
    dataset_id: str | None = Field(None, description="the dataset version its job trained "
                                   "on (null: imported)")
    benchmark_images: int | None = Field(None, description="a retrain: the images of its "
                                         "name's benchmark set kept out of its training")
    created_at: Timestamp


class AdaptersPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    data: list[AdapterPublic]
    next_cursor: str | None


def _override_field(f) -> tuple[type, object]:
    """A retrain's override of one exposed field of the training spec (left out: the parent
    job's value); bounds published, checked by the service with every other problem."""
    kind, info = _form_field(f)
    extra = dict(info.json_schema_extra or {})
    return kind, Field(None, description=info.description, alias=info.alias,
                       json_schema_extra=lambda schema: schema.pop("default", None)
                       or schema.update(extra))


RetrainHyperparameters = create_model(
    "RetrainHyperparameters", __config__=ConfigDict(extra="forbid"),
    __doc__="Overrides of the parent job's hyperparameters (its auto ones are resolved "
    "again for the new dataset version).",
    **{f.name: _override_field(f) for f in TrainConfig.exposed_fields()
       if f.name != "templates"})


class RetrainCreate(BaseModel):
    """A retrain (all optional)."""

    model_config = ConfigDict(extra="forbid")
    promote: Literal["manual", "auto"] = Field(
        "manual", description="kept on the job for promotion: manual (a person moves the "
        "alias) or auto (the alias moves to the new version unless it is worse than the "
        "previous one on the benchmark set on the mean and its paired 95% interval does not "
        "reach above zero)")
    alias: str | None = Field(None, min_length=1, max_length=40, description="the alias "
                              "promotion moves (made if missing); without one, every alias "
                              "of the name that points at the previous version", json_schema_extra={
                                  "pattern": "^[a-z][a-z0-9_-]{0,39}$"})
    hyperparameters: RetrainHyperparameters | None = None  # type: ignore[valid-type]


class ClassifyOptions(BaseModel):
    """What to classify with: an adapter, or a base model and class names (zero-shot)."""

    adapter_id: str | None = Field(None, description="a trained adapter: its id, "
                                   "name@VERSION or name@alias")
    adapter: str | None = Field(None, description="the same as adapter_id")
    base_model: str | None = Field(None, description="zero-shot: an allowed base model")
    template: str | None = Field(None, description="template name or a string with {} "
                                 "(default: the adapter's, or 'default')")
    top_k: int = Field(5, ge=1, le=1000, description="labels per image")
    calibrated: bool = Field(True, description="divide an adapter's logits by the temperature "
                             "fitted on its held-out split (its own classes only)")
    reject_unknown: bool = Field(False, description="answer 'unknown' when the top "
                                 "probability is below the adapter's stored threshold")
    threshold: float | None = Field(None, ge=0, le=1, description="answer 'unknown' when the "
                                    "top probability is below this (overrides the adapter's)")


class ClassifyJSON(ClassifyOptions):
    """``application/json``: images as base64 strings."""

    # the pattern is checked by the route's decoder, which names the image that is not base64
    images: list[str] = Field(description="base64-encoded image files", json_schema_extra={
        "items": {"type": "string", "contentEncoding": "base64", "pattern":
                  r"^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"}})
    classes: list[str] | None = Field(None, description="zero-shot classes, or other classes "
                                      "for an adapter (the paper's new-class use)")

    model_config = {"json_schema_extra": {"examples": [{  # a 2x2 PNG
        "images": [("iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR42mM8ISfHwMDAxMDAwMDA"
                    "AAANBAEIf62CUQAAAABJRU5ErkJggg==")], "base_model": "clipfit-mini",
        "classes": ["sneaker", "sandal", "bag"], "top_k": 2}]}}


class ClassifyForm(ClassifyOptions):
    """``multipart/form-data``: images as files."""

    images: list[UploadFile] = Field(default_factory=list, description="image files")
    classes: str | None = Field(None, description="comma-separated class names")

    def class_list(self) -> list[str] | None:
        """``classes`` split at commas (each name trimmed), or None when not given."""
        return [c.strip() for c in self.classes.split(",")] if self.classes else None


class Label(BaseModel):
    label: str
    prob: float


class ImagePrediction(BaseModel):
    label: str = Field(description="the top label, or 'unknown' when rejected")
    top_k: list[Label]
    unknown: bool = Field(False, description="the top probability was below the threshold")


class ClassifyPublic(BaseModel):
    model: str
    adapter_id: str | None
    predictions: list[ImagePrediction]
    calibrated: bool = Field(False, description="probabilities use the adapter's temperature")
    threshold: float | None = Field(None, description="the rejection threshold applied")

    model_config = {"json_schema_extra": {"examples": [{
        "model": "ViT-B-16:openai", "adapter_id": "0bc3808806804f52b55dcd6310eed587",
        "predictions": [{"label": "sneaker", "top_k": [{"label": "sneaker", "prob": 0.91},
                                                       {"label": "sandal", "prob": 0.06}]}]}]}}


class AdapterImportForm(BaseModel):
    """``multipart/form-data``: a delta zip, as ``GET /v1/adapters/{id}/download`` gives it."""

    file: UploadFile = Field(description="zip of adapter_config.json and "
                             "adapter_model.safetensors")
    name: str | None = Field(None, max_length=200)


class EvaluationPublic(BaseModel):
    adapter_id: str
    evaluation: dict[str, Any] = Field(description="zero-shot and tuned on the held-out split: "
                                       "accuracy, per class (images, precision, recall, "
                                       "recall_gain) and the confusion matrix (rows: true "
                                       "class, columns: predicted)")
    calibration: dict[str, Any] | None = Field(description="temperature, calibration error "
                                               "before and after, rejection threshold")


class Problems(BaseModel):
    message: str
    problems: list[str] = Field(description="every problem found, at most 50 then a count")


class ErrorPublic(BaseModel):
    """Every error answer, in one shape (``api.errors``)."""

    code: str = Field(description="the kind of error, for programs: invalid, unauthorized, "
                      "forbidden, not_found, conflict, too_large, over_quota, unavailable, ...")
    message: str = Field(description="a sentence for people")
    problems: list[str] = Field(description="every problem found (422: at least one), at "
                                "most 50 then a count")
    detail: str | Problems = Field(description="as in 0.1: the sentence, or for 422 the "
                                   "message with its problems")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorPublic, "description": text} for code, text in (
        (400, "the body could not be parsed"),
        (401, "no API key, or an unknown or revoked one"),
        (403, "the API key lacks the scope this route needs"),
        (404, "not found (another tenant's ids answer this too)"),
        (409, "conflicts with the current state"),
        (413, "the request body exceeds CLIPFIT_MAX_REQUEST_BYTES"),
        (429, "a rate limit or quota is exhausted (Retry-After says when to retry)"),
        (422, "the request is invalid: every problem is listed"),
        (503, "a dependency (database, broker, weights) is unavailable"))}


Scope = Literal["admin", "train", "classify", "read"]


class TenantPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    created_at: Timestamp


class TenantsPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    data: list[TenantPublic]


class KeyCreate(BaseModel):
    tenant: str = Field(min_length=1, max_length=100, description="the tenant's name")
    scopes: list[Scope] = Field(min_length=1, max_length=4)
    name: str | None = Field(None, max_length=100, description="what the key is for")


class KeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    tenant: str = ""
    name: str | None
    prefix: str = Field(description="the secret's first characters, to tell keys apart")
    scopes: list[str]
    created_at: Timestamp
    revoked_at: Timestamp | None


class KeysPublic(BaseModel):
    data: list[KeyPublic]


class KeyCreated(KeyPublic):
    key: str = Field("", description="the secret: shown once, stored only as a hash")


def _not_null(field: dict[str, Any]) -> dict[str, Any]:
    """``field``'s schema without its ``null`` alternative (and null default)."""
    kinds = [k for k in field.get("anyOf", []) if k != {"type": "null"}]
    if "anyOf" not in field or len(kinds) == len(field["anyOf"]):
        return field
    rest = {k: v for k, v in field.items() if k != "anyOf" and (k, v) != ("default", None)}
    return {**kinds[0], **rest} if len(kinds) == 1 else {"anyOf": kinds, **rest}


def multipart_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A form model's JSON schema as multipart carries it: a part is sent or left out, never
    null, so optional fields lose their ``null`` alternative."""
    schema = model.model_json_schema()
    schema["properties"] = {name: _not_null(field)
                            for name, field in schema.get("properties", {}).items()}
    return schema


def without_null_parameters(openapi: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with its parameters as a query string or header carries them: a
    value or nothing, never null (``X | None = None`` gives them a ``null`` alternative, which
    clients would send as ``""`` or ``"null"``)."""
    for item in openapi.get("paths", {}).values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _not_null(parameter["schema"])
    return openapi


def validation_problems(error: ValidationError) -> list[str]:
    """'field: message' per error; never the input value (it may be large or hostile)."""
    return [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in error.errors(include_input=False, include_url=False)]


# A page's cursor: the last row's created_at (microseconds since 1970, UTC) and id. Every
# string the pattern allows is a cursor, so the schema says exactly which are valid; empty
# means the first page.
CURSOR_PATTERN = r"^([0-9]{1,17}\.[0-9A-Za-z_-]{1,32})?$"
EPOCH = datetime(1970, 1, 1)


def encode_cursor(created_at: datetime, ident: str) -> str:
    if created_at.tzinfo is not None:
        created_at = created_at.astimezone(UTC).replace(tzinfo=None)
    return f"{(created_at - EPOCH) // timedelta(microseconds=1)}.{ident}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) of a cursor; ValueError when it is not one."""
    micros, dot, ident = cursor.partition(".")
    if not (dot and micros.isascii() and micros.isdigit() and len(micros) <= 17 and ident):
        raise ValueError(f"not a cursor: {cursor[:40]!r}")
    return EPOCH + timedelta(microseconds=int(micros)), ident


WebhookEvent = Literal["job.succeeded", "job.failed", "job.cancelled", "adapter.deleted",
                       "adapter.drift", "adapter.version_ready"]


class WebhookCreate(BaseModel):
    url: str = Field(min_length=8, max_length=2000,
                     pattern=r"^https?://[^\s/?#]+([/?#]\S*)?$",
                     description="where events are POSTed (http or https); its host must be "
                     "public unless CLIPFIT_WEBHOOK_ALLOW_PRIVATE=true")
    events: list[WebhookEvent] = Field(min_length=1, max_length=len(WebhookEvent.__args__),
                                       description="the event types to send")
    description: str | None = Field(None, max_length=200)


class WebhookPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    url: str
    events: list[str]
    description: str | None
    created_at: Timestamp


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="the signing secret (whsec_...), shown only now")


class WebhooksPublic(BaseModel):
    data: list[WebhookPublic]


class DeliveryPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str = Field(description="the webhook-id header: the same on every attempt")
    event_type: str
    status: str = Field(description="pending, succeeded or failed")
    attempts: int
    last_status_code: int | None
    last_error: str | None
    payload: dict[str, Any]
    created_at: Timestamp
    next_attempt_at: Timestamp
    delivered_at: Timestamp | None


class DeliveriesPublic(BaseModel):
    data: list[DeliveryPublic]
