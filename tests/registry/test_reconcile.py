"""Fencing by attempt, and the reconciler's decisions, on PostgreSQL and SQLite."""

from datetime import timedelta

import pytest

from clipfit_core.data import Sample
from registry import crud
from registry.models import DEFAULT_TENANT, JobStatus, utcnow
from registry.settings import Settings
from worker.reconcile import reconcile_once


def make_job(session):
    return crud.create_job(session, tenant_id=DEFAULT_TENANT, classnames=["a", "b"],
                           images=[Sample(b"a", 0, "a.png"), Sample(b"b", 1, "b.png")],
                           base_model="clipfit-tiny", templates=["{}"], hyperparameters={})


def test_a_stale_attempt_cannot_write_over_its_successor(session):
    job = make_job(session)
    first = crud.mark_running(session, job_id=job.id).attempts
    fresh = utcnow() - timedelta(seconds=60)
    assert crud.mark_running(session, job_id=job.id, stale_before=fresh) is None  # duplicate
    job.heartbeat_at = utcnow() - timedelta(seconds=120)  # the first worker went silent
    second = crud.mark_running(session, job_id=job.id, stale_before=fresh).attempts
    assert second == first + 1
    assert crud.heartbeat(session, job_id=job.id, attempt=first) is False
    assert crud.record_progress(session, job_id=job.id, progress={}, attempt=first) is True
    assert crud.finish_attempt(session, job_id=job.id, attempt=first,
                               status=JobStatus.failed) is False
    assert job.status == "running"
    assert crud.finish_attempt(session, job_id=job.id, attempt=second,
                               status=JobStatus.succeeded) is True


def test_cancel_ends_a_stuck_job_at_once(session):
    job = make_job(session)
    crud.mark_running(session, job_id=job.id)
    recent = utcnow() - timedelta(seconds=60)
    assert crud.request_cancel(session, job_id=job.id, stale_before=recent).status == "running"
    job.heartbeat_at = utcnow() - timedelta(seconds=120)
    assert crud.request_cancel(session, job_id=job.id, stale_before=recent).status == \
        "cancelled"


def test_reconciler_requeues_fails_and_resends(session, migrated):
    settings = Settings(stale_after_seconds=30, requeue_after_seconds=30, max_attempts=2,
                        reconcile_interval_seconds=1, broker_url="sqla+sqlite:///:memory:")
    old = utcnow() - timedelta(seconds=300)
    lost, spent, waiting, fresh = (make_job(session) for _ in range(4))
    for job in (lost, spent):
        crud.mark_running(session, job_id=job.id)
        job.heartbeat_at = old
    spent.attempts = 2
    waiting.enqueued_at = old
    session.commit()
    sent = []
    done = reconcile_once(migrated, settings, lambda job_id, task: sent.append(job_id), holder="test")
    assert lost.id in done["requeued"] and spent.id in done["failed"]
    assert waiting.id in done["resent"] and fresh.id not in done["resent"]
    assert set(sent) >= {lost.id, waiting.id} and spent.id not in sent
    session.expire_all()
    assert crud.get_job(session, job_id=lost.id).status == "queued"
    failed = crud.get_job(session, job_id=spent.id)
    assert failed.status == "failed" and "lost 2 times" in failed.error
    # another holder waits for the lease
    assert reconcile_once(migrated, settings, lambda job_id, task: sent.append(job_id), holder="other")["requeued"] == []


def test_a_job_the_reconciler_could_not_send_is_sent_on_its_next_round(session, migrated):
    settings = Settings(requeue_after_seconds=3600, reconcile_interval_seconds=1,
                        broker_url="sqla+sqlite:///:memory:")
    job = make_job(session)
    job.enqueued_at = None  # stored by the API while the broker was away
    session.commit()

    def broker_down(job_id, task):
        raise ConnectionRefusedError("the broker is away")

    with pytest.raises(ConnectionRefusedError):
        reconcile_once(migrated, settings, broker_down, holder="test")
    session.expire_all()
    assert crud.get_job(session, job_id=job.id).enqueued_at is None  # still never sent
    sent = []
    assert job.id in reconcile_once(migrated, settings, lambda job_id, task: sent.append(job_id), holder="test")["resent"]
    assert sent == [job.id]
    session.expire_all()
    assert crud.get_job(session, job_id=job.id).enqueued_at is not None


def test_batch_predictions_are_reconciled_to_their_own_task(session, migrated):
    """A prediction whose worker went silent is requeued, and a queued one without a message
    resent, to clipfit.predict_job; a stale attempt cannot record a chunk."""
    from registry.predictions import NamedImage, create_prediction, record_chunk
    from service.queue import PREDICT_TASK, TRAIN_TASK

    settings = Settings(stale_after_seconds=30, requeue_after_seconds=30, max_attempts=3,
                        reconcile_interval_seconds=1, broker_url="sqla+sqlite:///:memory:")
    old = utcnow() - timedelta(seconds=300)

    x, y = crud.put_blob(session, data=b"image x"), crud.put_blob(session, data=b"image y")

    def prediction():
        return create_prediction(
            session, tenant_id=DEFAULT_TENANT, base_model="clipfit-tiny", templates=["{}"],
            classnames=["a", "b"], top_k=2, temperature=1.0, threshold=None, adapter_id=None,
            adapter_ref=None, source="images", chunk_size=1,
            stored=[NamedImage("x", x), NamedImage("y", y)])

    lost, waiting, training = prediction(), prediction(), make_job(session)
    first = crud.mark_running(session, job_id=lost.id).attempts
    lost.heartbeat_at = old
    waiting.enqueued_at = training.enqueued_at = old
    session.commit()
    sent = []
    done = reconcile_once(migrated, settings, lambda job_id, task: sent.append((job_id, task)),
                          holder="test")
    assert lost.id in done["requeued"] and waiting.id in done["resent"]
    assert {(lost.id, PREDICT_TASK), (waiting.id, PREDICT_TASK),
            (training.id, TRAIN_TASK)} <= set(sent)
    session.expire_all()
    second = crud.mark_running(session, job_id=lost.id).attempts
    assert second == first + 1
    assert record_chunk(session, job_id=lost.id, attempt=first, chunk=0, rows=[],
                        progress={}) is None  # fenced
    assert record_chunk(session, job_id=lost.id, attempt=second, chunk=0, rows=[{"n": 1}],
                        progress={"chunk": 0}) is False
