"""Drift: what an adapter serves, against what its held-out split said it would.

The baseline of an adapter comes from its calibration (``clipfit_core.report``), measured on
its held-out split with its own classes, calibrated probabilities and its threshold:

- the share answered "unknown" there is ``a * r + (1 - a) * w``, where ``a`` is the tuned
  model's held-out accuracy (``evaluation.tuned.accuracy``; calibration never changes which
  label is on top, so ``a`` is also the share of held-out answers that are right), ``r`` the
  share of right answers the threshold turns away (``held_out_rejected_right``) and ``w``
  the share of wrong ones (``held_out_rejected_wrong``; absent when none was wrong, and then
  ``a`` is 1). None when the adapter has no threshold or no report (no held-out split).
- the share of low-confidence answers there (top probability below LOW_CONFIDENCE) is
  ``held_out_low_confidence``, stored by adapters trained since it exists; None for older
  ones and imports without it, which are then judged on "unknown" only.

The check reads the hours that overlap the last CLIPFIT_DRIFT_WINDOW_MINUTES (whole hours:
``served_stats`` counts per hour) of every adapter with at least
CLIPFIT_DRIFT_MIN_PREDICTIONS answers there. When a share it has a baseline for exceeds
CLIPFIT_DRIFT_FACTOR x max(baseline, SHARE_FLOOR), an ``adapter.drift`` event goes into the
webhook outbox (so delivery, retries and signing are the webhooks' own), at most once per
adapter per window: when it fired is stored (``drift_alerts``)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from registry import adapters as adapter_rows
from registry import served as served_rows
from registry.jobs import acquire_lease
from registry.models import utcnow
from registry.settings import Settings
from registry.webhooks import enqueue_webhook_event

from .served import DRIFT_CHECK_SECONDS, hour_of

EVENT = "adapter.drift"
LEASE = "served-drift"
SHARE_FLOOR = 0.01  # a baseline of 0 would make any "unknown" answer a drift
SHARES = ("unknown_share", "low_confidence_share")


def _share(value) -> float | None:
    """A share from a stored config (imports come from elsewhere): a number from 0 to 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and 0 <= value <= 1 else None


def baseline(config: dict) -> dict[str, float | None]:
    """The held-out shares of "unknown" and of low-confidence answers (None: not known)."""
    calibration, evaluation = config.get("calibration"), config.get("evaluation")
    calibration = calibration if isinstance(calibration, dict) else {}
    tuned = evaluation.get("tuned") if isinstance(evaluation, dict) else None
    accuracy = _share(tuned.get("accuracy")) if isinstance(tuned, dict) else None
    right = _share(calibration.get("held_out_rejected_right"))
    wrong = _share(calibration.get("held_out_rejected_wrong"))
    unknown = None
    if calibration.get("threshold") is not None and accuracy is not None \
            and (right is not None or accuracy == 0) and (wrong is not None or accuracy == 1):
        unknown = round(accuracy * (right or 0.0) + (1 - accuracy) * (wrong or 0.0), 4)
    return {"unknown_share": unknown,
            "low_confidence_share": _share(calibration.get("held_out_low_confidence"))}


def _iso(moment: datetime) -> str:
    return moment.isoformat() + "Z"


def check(s: Session, settings: Settings, *, now: datetime) -> list[dict]:
    """One round in the caller's transaction: the ``adapter.drift`` events it put in the
    outbox (their ``data``)."""
    window = timedelta(minutes=settings.drift_window_minutes)
    since, factor = hour_of(now - window), settings.drift_factor
    fired = []
    for row in served_rows.served_since(s, since=since,
                                        min_predictions=settings.drift_min_predictions):
        adapter = adapter_rows.get_adapter(s, adapter_id=row.adapter_id,
                                           tenant_id=row.tenant_id)
        if adapter is None:  # deleted since
            continue
        base = baseline(adapter.config)
        observed = {"unknown_share": round(row.unknown / row.predictions, 4),
                    "low_confidence_share": round(row.low_confidence / row.predictions, 4)}
        exceeded = [share for share in SHARES if base[share] is not None
                    and observed[share] > factor * max(base[share], SHARE_FLOOR)]
        if not exceeded:
            continue
        last = served_rows.last_drift(s, adapter_id=adapter.id)
        if last is not None and last > now - window:  # reported within this window
            continue
        data = {"adapter_id": adapter.id, "name": adapter.name, "version": adapter.version,
                "window": {"minutes": settings.drift_window_minutes, "start": _iso(since),
                           "end": _iso(now)},
                "predictions": int(row.predictions), "observed": observed, "baseline": base,
                "factor": factor, "exceeded": exceeded}
        enqueue_webhook_event(s, tenant_id=adapter.tenant_id, event_type=EVENT, data=data)
        served_rows.record_drift(s, tenant_id=adapter.tenant_id, adapter_id=adapter.id,
                                 fired_at=now)
        fired.append(data)
    return fired


def check_once(sessions: sessionmaker[Session], settings: Settings, *, holder: str,
               now: datetime | None = None, lease: str = LEASE) -> list[dict] | None:
    """One round under the drift lease (one process at a time); None when another process
    holds it."""
    with sessions() as s:
        try:
            held = acquire_lease(s, name=lease, holder=holder,
                                 ttl_seconds=3 * DRIFT_CHECK_SECONDS)
            s.commit()
        except IntegrityError:  # another process took it first, at the same moment
            return None
    if not held:
        return None
    with sessions() as s:
        fired = check(s, settings, now=now or utcnow())
        s.commit()
    return fired
