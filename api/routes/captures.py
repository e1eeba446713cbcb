"""Capture and review: the classified images an adapter's rules keep (its lineage: every
version of its name), their review and labels. Settings and labels need a ``train`` key,
reading a ``read`` key."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from clipfit_core.prompts import MAX_CLASSNAME_CHARS
from service import captures
from service.capture_rules import (
    ALIAS_PATTERN,
    DEFAULT_RETENTION_DAYS,
    MAX_PER_DAY,
    MAX_PER_HOUR,
    MAX_RETENTION_DAYS,
    MAX_RETRAIN_AFTER,
    PROMOTE,
)
from service.capture_writer import MEDIA_TYPES, OCTET_STREAM
from service.captures import MAX_LABELS, LabelItem

from ..auth import Reader, Trainer
from ..deps import ContextDep, page_next, page_start
from ..schemas import CURSOR_PATTERN, Label, Timestamp

router = APIRouter(prefix="/v1/adapters", tags=["captures"])
Reference = Annotated[str, Path(description="the adapter's id, name@VERSION or name@alias: "
                                "captures belong to its name (every version), or to it when "
                                "it has none")]
CaptureId = Annotated[str, Path(max_length=64)]
CaptureRule = Literal["unknown", "below_confidence", "classes", "sample_rate"]
CaptureState = Literal["pending", "labelled", "discarded"]
Probability = {"minimum": 0, "maximum": 1}


class CaptureSettingsSet(BaseModel):
    """The rules (at least one that can fire); what is left out is off. Every value is
    checked by the service and every problem named in one 422."""

    model_config = ConfigDict(extra="forbid")
    alias: str | None = Field(None, description="capture only requests that named the adapter "
                              "as name@alias (default: every request)",
                              json_schema_extra={"pattern": f"^{ALIAS_PATTERN}$"})
    sample_rate: float | None = Field(None, description="capture this share of answers at "
                                      "random", json_schema_extra=Probability)
    below_confidence: float | None = Field(
        None, description="capture answers whose top probability is below this",
        json_schema_extra=Probability)
    unknown: bool = Field(False, description="capture answers of 'unknown'")
    classes: list[str] | None = Field(None, description="capture answers of these classes "
                                      "(the adapter's)", json_schema_extra={"maxItems": 1000})
    max_per_hour: int | None = Field(None, description="captures of the lineage per hour, at "
                                     "most", json_schema_extra={"minimum": 0,
                                                                "maximum": MAX_PER_HOUR})
    max_per_day: int | None = Field(None, description="captures of the lineage per day, at "
                                    "most", json_schema_extra={"minimum": 0,
                                                               "maximum": MAX_PER_DAY})
    retention_days: int | None = Field(
        None, description=f"days a capture is kept (default {DEFAULT_RETENTION_DAYS})",
        json_schema_extra={"minimum": 1, "maximum": MAX_RETENTION_DAYS})
    retrain_after: int | None = Field(
        None, description="start a retrain when this many labelled captures wait and no "
        "version of the name is being trained (a named adapter only)",
        json_schema_extra={"minimum": 1, "maximum": MAX_RETRAIN_AFTER})
    promote: str | None = Field(None, description="such a retrain's promotion (default "
                                "manual)", json_schema_extra={"enum": list(PROMOTE)})


class CaptureSettingsPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    adapter_id: str
    lineage: str = Field(description="what the settings and captures belong to: the "
                         "adapter's name, or its id when it has none")
    enabled: bool
    alias: str | None
    sample_rate: float | None
    below_confidence: float | None
    unknown: bool
    classes: list[str]
    max_per_hour: int | None
    max_per_day: int | None
    retention_days: int
    retrain_after: int | None = None
    promote: Literal["manual", "auto"] = "manual"
    updated_at: Timestamp | None


class CapturePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    lineage: str
    adapter_id: str = Field(description="the version that answered")
    rule: CaptureRule = Field(description="the rule that kept it")
    predicted: str = Field(description="the answer's label ('unknown' when rejected)")
    confidence: float = Field(description="the top class's probability")
    unknown: bool
    top_k: list[Label]
    filename: str
    media_type: str
    size_bytes: int
    sha256: str = Field(validation_alias=AliasChoices("blob_sha256", "sha256"))
    state: CaptureState
    label: str | None = Field(description="the reviewer's label")
    new_class: bool = Field(description="the label is not one of the adapter's classes")
    labelled_at: Timestamp | None
    dataset_id: str | None = Field(None, description="the dataset version a retrain added it "
                                   "to (labelled, not yet taken: waiting for a retrain)")
    benchmark: bool = Field(False, description="a retrain set it aside into the name's "
                            "benchmark set (never trained on)")
    created_at: Timestamp
    expires_at: Timestamp


class CapturesPublic(BaseModel):
    data: list[CapturePublic]
    next_cursor: str | None = None


LABEL_CHOICE = {"oneOf": [
    {"required": ["label"], "properties": {"discard": {"const": False}}},
    {"required": ["discard"], "properties": {"discard": {"const": True}},
     "not": {"required": ["label"]}}]}


class CaptureLabel(BaseModel):
    """``label`` (one of the adapter's classes; another with ``new_class``), or ``discard``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=LABEL_CHOICE)
    label: str | None = Field(None, min_length=1, max_length=MAX_CLASSNAME_CHARS)
    new_class: bool = Field(False, description="the label is a class the adapter lacks")
    discard: bool = Field(False, description="not worth a label")


class CaptureLabelItem(CaptureLabel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=LABEL_CHOICE)
    id: str = Field(min_length=1, max_length=64, description="the capture")


class CaptureLabels(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[CaptureLabelItem] = Field(min_length=1, max_length=MAX_LABELS)


IMAGE = {200: {"description": "the image as classify received it",
               "content": {kind: {} for kind in (*MEDIA_TYPES, OCTET_STREAM)}}}


@router.put("/{adapter_id}/capture", response_model=CaptureSettingsPublic,
            summary="Capture classified images of the adapter's lineage for review")
def set_capture(adapter_id: Reference, body: CaptureSettingsSet, ctx: ContextDep,
                principal: Trainer):
    return captures.set_settings(ctx, principal, adapter_id, body.model_dump())


@router.get("/{adapter_id}/capture", response_model=CaptureSettingsPublic,
            summary="The lineage's capture settings (enabled false: nothing is captured)")
def get_capture(adapter_id: Reference, ctx: ContextDep, principal: Reader):
    return captures.get_settings(ctx, principal, adapter_id)


@router.delete("/{adapter_id}/capture", status_code=204, response_class=Response,
               summary="Stop capturing (what was captured stays until it expires)")
def disable_capture(adapter_id: Reference, ctx: ContextDep, principal: Trainer):
    captures.disable(ctx, principal, adapter_id)
    return Response(status_code=204)


@router.get("/{adapter_id}/captures", response_model=CapturesPublic,
            summary="The lineage's captures, newest first")
def list_captures(adapter_id: Reference, ctx: ContextDep, principal: Reader,
                  rule: CaptureRule | None = None,
                  predicted: Annotated[str | None, Query(max_length=200,
                                                         description="the answer's label")
                                       ] = None,
                  min_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
                  max_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
                  state: CaptureState | None = None,
                  limit: Annotated[int, Query(ge=1, le=200)] = 50,
                  cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN)] = None):
    rows = captures.list_captures(ctx, principal, adapter_id, limit=limit,
                                  before=page_start(cursor), rule=rule, predicted=predicted,
                                  min_confidence=min_confidence,
                                  max_confidence=max_confidence, state=state)
    return CapturesPublic(data=rows, next_cursor=page_next(rows, limit))


@router.post("/{adapter_id}/captures:label", response_model=CapturesPublic,
             summary="Label or discard many captures: all or none")
def label_captures(adapter_id: Reference, body: CaptureLabels, ctx: ContextDep,
                   principal: Trainer):
    items = [LabelItem(**item.model_dump()) for item in body.items]
    return CapturesPublic(data=captures.label_captures(ctx, principal, adapter_id, items))


@router.get("/{adapter_id}/captures/{capture_id}", response_model=CapturePublic)
def get_one_capture(adapter_id: Reference, capture_id: CaptureId, ctx: ContextDep,
                    principal: Reader):
    return captures.get_capture(ctx, principal, adapter_id, capture_id)


@router.get("/{adapter_id}/captures/{capture_id}/image", response_class=Response,
            responses=IMAGE, summary="The captured image")
def capture_image(adapter_id: Reference, capture_id: CaptureId, ctx: ContextDep,
                  principal: Reader):
    data, media_type = captures.capture_image(ctx, principal, adapter_id, capture_id)
    return Response(data, media_type=media_type,
                    headers={"Cache-Control": "private, max-age=3600"})


@router.post("/{adapter_id}/captures/{capture_id}", response_model=CapturePublic,
             summary="Label a capture (a class, a new class) or discard it")
def label_capture(adapter_id: Reference, capture_id: CaptureId, body: CaptureLabel,
                  ctx: ContextDep, principal: Trainer):
    return captures.label_capture(ctx, principal, adapter_id,
                                  LabelItem(id=capture_id, **body.model_dump()))
