"""What an adapter served, hour by hour (a ``read`` key): answers, the shares answered
"unknown", of low confidence and captured, a histogram of the top probability, and the
held-out baseline the drift check compares them with."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from service import stats
from service.served import BUCKET_BOUNDS, LOW_CONFIDENCE

from ..auth import Reader
from ..deps import ContextDep
from ..schemas import Timestamp

router = APIRouter(prefix="/v1/adapters", tags=["monitoring"])
Reference = Annotated[str, Path(description="the adapter's id, name@VERSION or name@alias")]
SHARE = "of the answers (null: none)"


class ServedTotalsPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    predictions: int = Field(description="images answered")
    unknown: int = Field(description="answered 'unknown' (below a rejection threshold)")
    low_confidence: int = Field(description=f"top probability below {LOW_CONFIDENCE}")
    captured: int = Field(description="queued for capture by the lineage's rules")
    unknown_share: float | None = Field(description=f"unknown {SHARE}")
    low_confidence_share: float | None = Field(description=f"low_confidence {SHARE}")
    captured_share: float | None = Field(description=f"captured {SHARE}")
    histogram: list[int] = Field(description="answers per top-probability bucket: [0, 0.1), "
                                 "[0.1, 0.2), ..., [0.9, 1]")


class ServedHourPublic(ServedTotalsPublic):
    hour: Timestamp = Field(description="the hour's start (UTC)")


class BaselinePublic(BaseModel):
    unknown_share: float | None = Field(description="the held-out split's share answered "
                                        "'unknown' (null: no threshold or no report)")
    low_confidence_share: float | None = Field(description="the held-out split's share of "
                                               "low-confidence answers (null: not stored)")


class ServedVersionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    adapter_id: str
    name: str | None
    version: int | None
    baseline: BaselinePublic
    totals: ServedTotalsPublic = Field(description="over the window")
    hours: list[ServedHourPublic] = Field(description="hours with answers, oldest first")


class AdapterStatsPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    adapter_id: str = Field(description="the adapter asked for")
    hours: int = Field(description="the window, in hours (the current one included)")
    since: Timestamp = Field(description="the window's first hour")
    until: Timestamp = Field(description="now (counts reach the database within 15 s)")
    low_confidence_below: float = LOW_CONFIDENCE
    buckets: list[float] = Field([0.0, *BUCKET_BOUNDS],
                                 description="each histogram bucket's lower bound")
    versions: list[ServedVersionPublic] = Field(description="the adapter, or with lineage "
                                                "every version of its name, oldest first")


@router.get("/{adapter_id}/stats", response_model=AdapterStatsPublic,
            summary="What the adapter served, hour by hour, against its held-out baseline")
def adapter_stats(adapter_id: Reference, ctx: ContextDep, principal: Reader,
                  hours: Annotated[int, Query(ge=1, le=stats.MAX_HOURS,
                                              description="the window in hours, the current "
                                              "one included")] = 24,
                  lineage: Annotated[bool, Query(description="every version of the "
                                                 "adapter's name")] = False):
    served = stats.served(ctx, principal, adapter_id, hours=hours, lineage=lineage)
    return AdapterStatsPublic.model_validate(served, from_attributes=True)
