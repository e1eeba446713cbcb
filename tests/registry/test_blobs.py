"""The blob store: a folder and a real S3-compatible server (SeaweedFS), under PostgreSQL and
SQLite. Rows name bytes only once the bytes are written; the collector deletes only what
nothing names for the grace period; the mover is verified and resumable."""

from __future__ import annotations

import hashlib
import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select, update

from bench.objectstore import SeaweedFS
from registry import blob_moves, crud
from registry.blobs import collect_garbage, get_blobs, put_blob, put_blobs, use_blob_store
from registry.blobstore import BlobMissing, BlobStoreUnavailable, FileBlobStore, blob_url
from registry.db import make_engine, session_scope
from registry.migrate import alembic_config
from registry.models import Blob, DatasetImage, utcnow
from registry.settings import Settings

HOURS = timedelta(hours=1)
LATER = timedelta(hours=2)  # "now" for the collector: whatever was written here is older


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    with SeaweedFS(tmp_path_factory.mktemp("s3")) as s3:
        yield s3


@pytest.fixture(scope="module")
def databases(new_postgres_database, tmp_path_factory):
    urls = {"postgres": new_postgres_database(),
            "sqlite": f"sqlite:///{tmp_path_factory.mktemp('blobs') / 'clipfit.sqlite3'}"}
    engines = {}
    for name, url in urls.items():
        command.upgrade(alembic_config(url), "head")
        engines[name] = make_engine(url)
    yield engines
    for engine in engines.values():
        engine.dispose()


def _settings(request, tmp_path, engine, kind: str) -> Settings:
    url = engine.url.render_as_string(hide_password=False)
    if kind == "s3":
        s3 = request.getfixturevalue("seaweed")
        prefix = f"t{os.urandom(4).hex()}"  # a store of its own per test: counts are exact
        return Settings(database_url=url, data_dir=tmp_path, blob_url=s3.blob_url(prefix),
                        **s3.settings())
    if kind == "file":
        return Settings(database_url=url, data_dir=tmp_path)
    return Settings(database_url=url, data_dir=tmp_path, blob_url="database")


@pytest.fixture(params=["postgres", "sqlite"])
def engine(request, databases):
    return databases[request.param]


@pytest.fixture(params=["file", "s3"])
def store_kind(request):
    return request.param


@pytest.fixture(autouse=True)
def no_blobs(databases):
    """Each test starts with no blob rows (and nothing naming one)."""
    for engine in databases.values():
        with session_scope(engine) as s:
            s.execute(DatasetImage.__table__.delete())
            s.execute(Blob.__table__.delete())


@pytest.fixture
def store(request, tmp_path, engine, store_kind):
    """The store of ``engine``'s database for this test (a folder or a prefix of its own)."""
    return use_blob_store(_settings(request, tmp_path, engine, store_kind))


def _dataset(session, digests: list[str]) -> str:
    tenant = crud.get_tenant_by_name(session, name="default") or crud.create_tenant(
        session, name="default")
    dataset = crud.create_dataset(session, tenant_id=tenant.id, classnames=["a", "b"],
                                  images=[])
    session.add_all(DatasetImage(dataset_id=dataset.id, position=i, label=0, filename=f"{i}",
                                 blob_sha256=d) for i, d in enumerate(digests))
    return dataset.id


# ------------------------------------------------------------------ the stores themselves

@pytest.mark.parametrize("kind", ["file", "s3"])
def test_store_contract(kind, request, tmp_path):
    if kind == "file":
        store = FileBlobStore(tmp_path / "blobs")
    else:
        from registry.blobstore import open_blob_store

        store = open_blob_store(_settings(request, tmp_path, make_engine("sqlite://"), "s3"))
    store.check()
    blobs = {hashlib.sha256(d).hexdigest(): d for d in (b"one", b"two" * 1000, b"")}
    store.put_many(blobs)
    assert store.get_many(blobs) == blobs
    one = next(iter(blobs))
    assert store.get(one) == blobs[one]
    assert store.stat(one).size == len(blobs[one])
    assert {o.sha256: o.size for o in store.objects()} == {k: len(v) for k, v in blobs.items()}
    before = store.stat(one).written_at
    store.put(one, blobs[one])  # written again: the collector's clock starts over
    assert store.stat(one).written_at >= before
    store.delete(one)
    store.delete(one)  # deleting what is gone is no error
    assert store.stat(one) is None
    with pytest.raises(BlobMissing):
        store.get(one)


def test_a_store_that_is_away_is_unavailable_not_missing(tmp_path):
    from registry.blobstore import open_blob_store

    dead = open_blob_store(Settings(data_dir=tmp_path, blob_url="s3://clipfit/x",
                                    s3_endpoint_url="http://127.0.0.1:9", s3_access_key_id="a",
                                    s3_secret_access_key="b", s3_region="us-east-1"))
    for call in (dead.check, lambda: dead.get("0" * 64), lambda: dead.put("0" * 64, b"x")):
        with pytest.raises(BlobStoreUnavailable) as caught:
            call()
        assert "127.0.0.1:9" not in str(caught.value)  # where, without the address


def test_unknown_blob_urls_are_refused_by_name(tmp_path):
    from registry.blobstore import open_blob_store

    for url in ("ftp://x", "s3://", "file://host/x", "blobs"):
        with pytest.raises(ValueError, match="CLIPFIT_BLOB_URL"):
            open_blob_store(Settings(data_dir=tmp_path, blob_url=url))
    assert blob_url(Settings(data_dir=tmp_path)) == (tmp_path / "blobs").resolve().as_uri()


# ------------------------------------------------------------------ rows and bytes

def test_rows_name_bytes_that_live_in_the_store(engine, store):
    data = [b"image-1", b"image-2", b"image-1"]
    with session_scope(engine) as s:
        digests = put_blobs(s, data=data)
        _dataset(s, digests)
    assert digests[0] == digests[2] == hashlib.sha256(b"image-1").hexdigest()
    with session_scope(engine) as s:
        rows = dict(s.execute(select(Blob.sha256, Blob.data)
                              .where(Blob.sha256.in_(digests))).all())
        assert rows == {digests[0]: None, digests[1]: None}  # not in the database
        assert get_blobs(s, digests=digests) == {digests[0]: b"image-1",
                                                 digests[1]: b"image-2"}
    assert {o.sha256 for o in store.objects()} == set(digests)


def test_a_rolled_back_write_leaves_only_bytes_the_collector_takes_after_the_grace(
        engine, store):
    with pytest.raises(RuntimeError), session_scope(engine) as s:
        digest = put_blob(s, data=b"never named")
        raise RuntimeError("the request failed after the bytes were written")
    with session_scope(engine) as s:
        assert s.get(Blob, digest) is None  # no row, so nothing can name missing bytes
    assert store.stat(digest) is not None
    young = collect_garbage(engine, grace=HOURS, store=store)
    assert (young.adopted, young.deleted) == (0, 0) and store.stat(digest) is not None
    old = collect_garbage(engine, grace=HOURS, store=store, now=utcnow() + LATER)
    assert (old.adopted, old.deleted) == (1, 1) and store.stat(digest) is None


def test_the_collector_deletes_only_what_nothing_names_for_the_grace(engine, store):
    with session_scope(engine) as s:
        named, unnamed = put_blobs(s, data=[b"named", b"unnamed"])
        _dataset(s, [named])
    assert collect_garbage(engine, grace=HOURS, store=store).deleted == 0  # too young
    collected = collect_garbage(engine, grace=HOURS, store=store, now=utcnow() + LATER)
    assert (collected.deleted, collected.bytes_freed) == (1, len(b"unnamed"))
    with session_scope(engine) as s:
        assert s.get(Blob, unnamed) is None and s.get(Blob, named) is not None
        assert get_blobs(s, digests=[named]) == {named: b"named"}
    assert store.stat(unnamed) is None and store.stat(named) is not None


def test_released_blobs_wait_out_the_grace_before_their_bytes_go(engine, store):
    """A deleted adapter's weights: the row stays (touched now), so a backup of the database
    taken a moment ago still finds its bytes for the grace period."""
    from registry.blobs import release_blobs

    with session_scope(engine) as s:
        digest = put_blob(s, data=b"weights")
        s.execute(update(Blob).where(Blob.sha256 == digest)
                  .values(touched_at=utcnow() - 10 * HOURS))
    with session_scope(engine) as s:
        assert release_blobs(s, digests=[digest]) == 1
    assert collect_garbage(engine, grace=HOURS, store=store).deleted == 0
    assert collect_garbage(engine, grace=HOURS, store=store, now=utcnow() + LATER).deleted == 1
    assert store.stat(digest) is None


def test_a_writer_holding_a_blob_keeps_it_from_the_collector(databases, request, tmp_path,
                                                             store_kind):
    """PostgreSQL, two sessions: a writer names an old unnamed blob again while the
    collector runs. The writer's row lock makes the collector skip it; the writer's dataset
    then names bytes that are there."""
    engine = databases["postgres"]
    store = use_blob_store(_settings(request, tmp_path, engine, store_kind))
    with session_scope(engine) as s:
        digest = put_blob(s, data=b"wanted again")
    holding, release = threading.Event(), threading.Event()

    def writer():
        with session_scope(engine) as s:
            put_blob(s, data=b"wanted again")  # the row's lock, held until commit
            holding.set()
            release.wait(30)
            _dataset(s, [digest])

    thread = threading.Thread(target=writer)
    thread.start()
    assert holding.wait(30)
    collected = collect_garbage(engine, grace=HOURS, store=store, now=utcnow() + LATER)
    release.set()
    thread.join(30)
    assert collected.deleted == 0
    with session_scope(engine) as s:
        assert get_blobs(s, digests=[digest]) == {digest: b"wanted again"}


# ------------------------------------------------------------------ moving and verifying

class FailingAfter:
    """A store that stops answering after ``writes`` writes (a store that goes away)."""

    def __init__(self, store, writes: int):
        self.store, self.writes = store, writes
        self.location = store.location

    def put_many(self, blobs):
        if self.writes < len(blobs):
            raise BlobStoreUnavailable("gone")
        self.writes -= len(blobs)
        self.store.put_many(blobs)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_moving_out_of_the_database_is_verified_and_resumable(engine, request, tmp_path,
                                                              store_kind):
    use_blob_store(_settings(request, tmp_path, engine, "database"))
    data = [f"image {i}".encode() * 50 for i in range(25)]
    with session_scope(engine) as s:
        digests = put_blobs(s, data=data)
        _dataset(s, digests)
        assert all(s.scalars(select(Blob.data).where(Blob.sha256.in_(digests))))
    store = use_blob_store(_settings(request, tmp_path, engine, store_kind))
    with pytest.raises(BlobStoreUnavailable):  # the store goes away in the second batch
        blob_moves.move_to_store(engine, FailingAfter(store, 10), batch=10)
    with session_scope(engine) as s:  # readable throughout, from either place
        assert list(get_blobs(s, digests=digests).values()) != []
        assert sorted(get_blobs(s, digests=digests).values()) == sorted(data)
    half = blob_moves.verify(engine, store)
    assert (half.in_store, half.in_database, half.ok) == (10, 15, True)
    moved = blob_moves.move_to_store(engine, store, batch=10)  # carries on
    assert moved.blobs == 15
    done = blob_moves.verify(engine, store, deep=True)
    assert (done.in_store, done.in_database, done.ok) == (25, 0, True)
    with session_scope(engine) as s:
        assert sorted(get_blobs(s, digests=digests).values()) == sorted(data)

    store.delete(digests[3])  # lost by hand: verify says so, and names it
    lost = blob_moves.verify(engine, store)
    assert lost.missing == [digests[3]] and not lost.ok
    with session_scope(engine) as s, pytest.raises(BlobMissing):
        get_blobs(s, digests=digests)
    store.put(digests[3], data[3])
    back = blob_moves.move_to_database(engine, store, batch=7)
    assert back.blobs == 25
    assert blob_moves.verify(engine, store).in_database == 25


def test_verify_deep_finds_bytes_changed_in_the_store(databases, tmp_path, request):
    engine = databases["sqlite"]
    store = use_blob_store(_settings(request, tmp_path, engine, "file"))
    with session_scope(engine) as s:
        digest = put_blob(s, data=b"original")
    path = Path(store.root) / digest[:2] / digest[2:4] / digest
    path.write_bytes(b"tampered")  # same size: only reading it tells
    assert blob_moves.verify(engine, store).ok
    assert blob_moves.verify(engine, store, deep=True).wrong == [digest]


def test_one_worker_at_a_time_collects(databases, request, tmp_path):
    """The workers' periodic collection: one process per interval holds the lease."""
    from worker.reconcile import collect_blobs_once

    engine = databases["sqlite"]
    settings = _settings(request, tmp_path, engine, "file").model_copy(
        update={"blob_gc_grace_hours": 0.0})
    store = use_blob_store(settings)
    with session_scope(engine) as s:
        digest = put_blob(s, data=b"unnamed")
        s.execute(update(Blob).values(touched_at=utcnow() - HOURS))
    first = collect_blobs_once(engine, settings, store, "worker-1")
    assert first is not None and first.deleted == 1 and store.stat(digest) is None
    assert collect_blobs_once(engine, settings, store, "worker-2") is None  # within the lease


def test_the_s3_listing_reads_every_page(request, tmp_path):
    """More objects than one page of list_objects_v2 (1,000): the collector and verify see
    them all."""
    from registry.blobstore import open_blob_store

    store = open_blob_store(_settings(request, tmp_path, make_engine("sqlite://"), "s3"))
    blobs = {hashlib.sha256(d).hexdigest(): d for d in (f"{i}".encode() for i in range(1050))}
    store.put_many(blobs)
    assert {o.sha256 for o in store.objects()} == set(blobs)


def test_a_database_store_takes_in_bytes_that_were_elsewhere(databases, request, tmp_path):
    """Back to CLIPFIT_BLOB_URL=database without moving the bytes: a writer of the same bytes
    puts them in the row, so they read back without a store."""
    engine = databases["sqlite"]
    use_blob_store(_settings(request, tmp_path, engine, "file"))
    with session_scope(engine) as s:
        digest = put_blob(s, data=b"elsewhere")
    use_blob_store(_settings(request, tmp_path, engine, "database"))
    with session_scope(engine) as s, pytest.raises(BlobMissing):
        get_blobs(s, digests=[digest])
    with session_scope(engine) as s:
        put_blob(s, data=b"elsewhere")
    with session_scope(engine) as s:
        assert get_blobs(s, digests=[digest]) == {digest: b"elsewhere"}
