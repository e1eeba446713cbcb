import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from clipfit_core.data import Sample
from registry import crud
from registry.models import DEFAULT_TENANT, Blob, Dataset, DatasetImage, Job, JobStatus


def make_job(session, images=None, tenant_id=DEFAULT_TENANT):
    images = [Sample(*i) for i in images or [(b"img-a", 0, "a.png"), (b"img-b", 1, "b.png"),
                                               (b"img-a", 1, "c.png")]]
    return crud.create_job(session, tenant_id=tenant_id, classnames=["cat", "dog"],
                           images=images, base_model="clipfit-tiny",
                           templates=["a photo of a {}."], hyperparameters={"epochs": 2},
                           name="pets")


def count(session, model):
    return session.scalar(select(func.count()).select_from(model))


def test_job_with_dataset_and_deduplicated_images(session):
    blobs_before = count(session, Blob)
    job = make_job(session)
    assert job.status == "queued" and job.attempts == 0
    assert count(session, Blob) == blobs_before + 2  # img-a stored once
    classnames, images = crud.training_images(session, job=job)
    assert classnames == ["cat", "dog"]
    assert images == [(b"img-a", 0, "a.png"), (b"img-b", 1, "b.png"), (b"img-a", 1, "c.png")]
    assert [e.kind for e in crud.list_events(session, job_id=job.id)] == ["queued"]


@pytest.mark.filterwarnings("ignore:New instance .* conflicts with persistent instance")
def test_idempotency_keys_are_per_tenant_and_expire(session):
    from datetime import timedelta

    from registry.models import utcnow

    other = crud.create_tenant(session, name=f"t-{utcnow().timestamp()}")
    job, theirs = make_job(session), make_job(session, tenant_id=other.id)
    crud.record_idempotency(session, tenant_id=DEFAULT_TENANT, key="k-1", request_hash="h",
                            job_id=job.id)
    crud.record_idempotency(session, tenant_id=other.id, key="k-1", request_hash="h2",
                            job_id=theirs.id)  # the same key in another tenant is its own
    long_ago = utcnow() - timedelta(days=1)
    found = crud.get_idempotency(session, tenant_id=DEFAULT_TENANT, key="k-1",
                                 not_before=long_ago)
    assert (found.job_id, found.request_hash) == (job.id, "h")
    with pytest.raises(IntegrityError), session.begin_nested():
        crud.record_idempotency(session, tenant_id=DEFAULT_TENANT, key="k-1",
                                request_hash="h3", job_id=job.id)
    assert crud.get_idempotency(session, tenant_id=DEFAULT_TENANT, key="k-1",
                                not_before=utcnow() + timedelta(seconds=1)) is None  # expired
    assert crud.get_idempotency(session, tenant_id=DEFAULT_TENANT, key="k-1",
                                not_before=long_ago) is None  # and removed


def test_keys_are_stored_hashed_and_can_be_revoked(session):
    key, secret = crud.create_key(session, tenant_id=DEFAULT_TENANT, scopes=["read"])
    assert secret.startswith("cfk_") and secret not in (key.key_hash, key.prefix)
    assert key.prefix == secret[:12] and crud.get_key_by_secret(session, secret=secret) is key
    assert crud.get_key_by_secret(session, secret=secret + "x") is None
    crud.revoke_key(session, key_id=key.id)
    assert crud.get_key_by_secret(session, secret=secret) is None


def test_failed_transaction_stores_nothing(session):
    before = [count(session, m) for m in (Job, Dataset, DatasetImage)]
    with pytest.raises(IntegrityError), session.begin_nested():
        make_job(session, images=[(b"x", 0, "x.png"), (b"y", 5, "y.png")])
        session.add(Job(id=None, tenant_id=DEFAULT_TENANT, dataset_id="missing",
                        base_model="m", templates=[], hyperparameters={}))
        session.flush()
    assert [count(session, m) for m in (Job, Dataset, DatasetImage)] == before


def test_running_progress_cancel_and_finish(session):
    job = make_job(session)
    assert crud.mark_running(session, job_id=job.id).attempts == 1
    assert crud.mark_running(session, job_id=job.id).attempts == 2  # a redelivery
    assert crud.record_progress(session, job_id=job.id, progress={"step": 1}) is False
    crud.request_cancel(session, job_id=job.id)
    assert crud.record_progress(session, job_id=job.id, progress={"step": 2}) is True
    crud.finish_job(session, job=job, status=JobStatus.cancelled)
    assert crud.mark_running(session, job_id=job.id) is None  # finished jobs stay finished
    kinds = [e.kind for e in crud.list_events(session, job_id=job.id)]
    assert kinds == ["queued", "running", "running", "progress", "cancel_requested",
                     "progress", "cancelled"]
    later = crud.list_events(session, job_id=job.id, after_id=crud.list_events(
        session, job_id=job.id)[3].id)
    assert [e.kind for e in later] == kinds[4:]


def test_cancel_of_a_queued_job_is_immediate(session):
    job = make_job(session)
    assert crud.request_cancel(session, job_id=job.id).status == "cancelled"
    assert job.finished_at is not None


def test_adapter_stored_with_job_success_and_deleted_with_its_blob(session):
    job = make_job(session)
    crud.mark_running(session, job_id=job.id)
    config = {"base_model": "clipfit-tiny", "base_fingerprint": "f" * 64,
              "classnames": ["cat", "dog"], "templates": ["a photo of a {}."],
              "hyperparameters": {"epochs": 2}, "trainable_count": 896}
    adapter = crud.store_adapter(session, job=job, weights=b"weights-" + job.id.encode(),
                                 config=config, metrics={"accuracy": 0.9})
    assert job.status == "succeeded" and crud.get_adapter_for_job(session, job_id=job.id) is adapter
    assert crud.get_blob(session, sha256=adapter.weights_sha256).startswith(b"weights-")
    assert crud.delete_adapter(session, adapter_id=adapter.id) is True
    assert crud.get_blob(session, sha256=adapter.weights_sha256) is None
    assert crud.delete_adapter(session, adapter_id=adapter.id) is False


def test_cursor_pagination_and_status_filter(session):
    jobs = [make_job(session) for _ in range(5)]
    crud.request_cancel(session, job_id=jobs[0].id)
    ids = {j.id for j in jobs}
    seen, before = [], None
    while True:
        page = [j for j in crud.list_jobs(session, tenant_id=None, limit=2, before=before)]
        if not page:
            break
        seen += [j.id for j in page]
        before = (page[-1].created_at, page[-1].id)
    assert ids <= set(seen) and len(seen) == len(set(seen))
    cancelled = crud.list_jobs(session, tenant_id=DEFAULT_TENANT, status="cancelled", limit=100)
    assert jobs[0].id in {j.id for j in cancelled}
    assert all(j.status == "cancelled" for j in cancelled)
    counts = crud.count_jobs_by_status(session)
    assert set(counts) == {s.value for s in JobStatus} and counts["cancelled"] >= 1
