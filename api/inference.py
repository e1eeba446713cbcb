"""The inference engine: per base model, one inference thread that merges concurrent requests
into batches, any mix of deltas per batch (``clipfit_core.serving``); deltas' host copies in an
LRU, text features cached per (delta, classes, templates)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence

import torch
from cachetools import LRUCache, TTLCache
from PIL import Image
from starlette.concurrency import run_in_threadpool

from clipfit_core.classify import Prediction, predict
from clipfit_core.delta import Delta
from clipfit_core.models import BaseModel, create_base_model, resolve_device
from clipfit_core.serving import BatchingServer, MixedAdapterModel
from registry import crud
from registry.settings import Settings
from service.adapters import AdapterInfo

DISCONNECT_POLL_SECONDS = 0.25
INLINE_LOGITS = 1 << 16  # images x classes up to which the answer is computed on the loop


class ClientGone(Exception):
    """The client disconnected before its answer was ready; its rows were dropped."""


class InferenceEngine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._servers: dict[str, BatchingServer] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._deltas: LRUCache[str, tuple[AdapterInfo, Delta]] = LRUCache(
            maxsize=settings.delta_cache_size)
        # adapter rows looked up recently: trusted as long as API keys are (a deletion through
        # another API process is dropped here when its message arrives, service.invalidation;
        # within CLIPFIT_KEY_CACHE_SECONDS in any case)
        self._adapters: TTLCache[str, AdapterInfo] = TTLCache(
            maxsize=10_000, ttl=settings.key_cache_seconds)
        self._lock = threading.Lock()
        self._forgets = 0  # adapters forgotten (deleted): a delta loaded across one is not kept
        self.delta_hits = 0
        self.delta_misses = 0

    # ------------------------------------------------------------------ models

    def base(self, spec: str) -> BaseModel:
        """The serving model's base (for exports and import checks; read, never written)."""
        return self.server(spec).model.base

    def server(self, spec: str) -> BatchingServer:
        """The base model's batching server, loaded on first use: a model of its own, never
        the embedded worker's (training changes that one in place). Loading one base model
        does not hold up requests for another."""
        with self._lock:
            server = self._servers.get(spec)
            if server is not None:
                return server
            loading = self._loading.setdefault(spec, threading.Lock())
        with loading:
            with self._lock:
                if spec in self._servers:
                    return self._servers[spec]
            s = self.settings
            base = create_base_model(spec, device=resolve_device(s.device),
                                     cache_dir=s.weights_dir)
            model = MixedAdapterModel(base)
            # the memory budget in slots; a batch's deltas (and the base) always fit
            model.table.set_capacity(max(s.batch_max_size + 1, int(
                s.resident_delta_mb * 2**20 // model.table.bytes_per_slot)))
            server = BatchingServer(model, max_batch=s.batch_max_size,
                                    max_wait_ms=s.batch_max_wait_ms,
                                    max_queue=s.batch_queue_images,
                                    mode="batched" if s.batching else "serial", name=spec)
            with self._lock:
                self._servers[spec] = server
            return server

    def close(self) -> None:
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.close()

    # ------------------------------------------------------------------ deltas

    def delta(self, session, adapter: AdapterInfo) -> Delta:
        with self._lock:
            cached = self._deltas.get(adapter.id)
            if cached is not None:
                self.delta_hits += 1
                return cached[1]
            self.delta_misses += 1
            forgets = self._forgets
        weights = crud.get_blob(session, sha256=adapter.weights_sha256)
        delta = Delta.from_bytes(weights, adapter.config)
        with self._lock:
            # an adapter deleted while its weights loaded (``forget`` ran meanwhile) must not
            # stay resident: this request gets the delta, nothing keeps it
            if self._forgets == forgets:
                self._deltas[adapter.id] = (adapter, delta)
        return delta

    def cached_adapter(self, adapter_id: str, tenant_id: str) -> AdapterInfo | None:
        """The adapter as last loaded, when its delta is resident (and the tenant's)."""
        with self._lock:
            cached = self._deltas.get(adapter_id)
        if cached is None or cached[0].tenant_id != tenant_id:
            return None
        return cached[0]

    def recent_adapter(self, adapter_id: str, tenant_id: str) -> AdapterInfo | None:
        with self._lock:
            adapter = self._adapters.get(adapter_id)
        return adapter if adapter is not None and adapter.tenant_id == tenant_id else None

    def remember_adapter(self, adapter: AdapterInfo) -> AdapterInfo:
        with self._lock:
            self._adapters[adapter.id] = adapter
        return adapter

    def forget(self, adapter_id: str) -> None:
        with self._lock:
            self._forgets += 1
            self._deltas.pop(adapter_id, None)
            self._adapters.pop(adapter_id, None)

    def forget_adapter_rows(self) -> None:
        """Look every adapter up again (deletions may have been missed). The resident deltas
        stay: a delta is reached through its row, but while the database is away, when a
        resident one answers (``cached_adapter``)."""
        with self._lock:
            self._adapters.clear()

    # ------------------------------------------------------------------ classify

    async def classify(self, spec: str,
                       images: Sequence[Image.Image] | Callable[[], Sequence[Image.Image]],
                       classnames: list[str], templates: list[str], delta: Delta | None,
                       top_k: int, is_disconnected: Callable[[], Awaitable[bool]] | None = None,
                       *, temperature: float = 1.0, threshold: float | None = None,
                       ) -> list[Prediction]:
        """Top-k predictions per image. ``images`` may be a function that decodes them: it
        runs in the thread pool with preprocessing and the text features (one hop); the
        image tower runs on the model's inference thread, batched with other requests.
        Raises ``Overloaded`` (queue full) and ``ClientGone``."""
        server = self._servers.get(spec) or await run_in_threadpool(self.server, spec)
        model = server.model

        def prepare() -> tuple[torch.Tensor, torch.Tensor]:
            loaded = images() if callable(images) else images
            return (model.base.preprocess(list(loaded)),
                    model.text_features(classnames, templates, delta))

        pixels, text = await run_in_threadpool(prepare)
        ticket = server.submit(pixels, delta)
        future = asyncio.wrap_future(ticket.future)
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_SECONDS)
                if done:
                    break
                if is_disconnected is not None and await is_disconnected():
                    ticket.cancel()
                    raise ClientGone()
        except asyncio.CancelledError:
            ticket.cancel()
            raise
        feats = future.result()

        def answer() -> list[Prediction]:
            return predict(model.logits(feats, text), classnames, temperature=temperature,
                           threshold=threshold, top_k=top_k)

        if feats.shape[0] * len(classnames) <= INLINE_LOGITS:
            return answer()  # a few microseconds: not worth a thread hop
        return await run_in_threadpool(answer)

    # ------------------------------------------------------------------ metrics

    def text_cache_stats(self) -> tuple[int, int]:
        with self._lock:
            servers = list(self._servers.values())
        return (sum(s.model.text_cache.hits for s in servers),
                sum(s.model.text_cache.misses for s in servers))

    def batch_stats(self) -> dict[str, dict[str, float]]:
        """Per base model: batches run, rows, mixed-adapter batches, seconds spent running
        batches, queued rows, resident deltas."""
        with self._lock:
            servers = dict(self._servers)
        return {spec: {"batches": s.batches, "rows": s.rows, "mixed_batches": s.mixed_batches,
                       "busy_seconds": round(s.busy_seconds, 3),
                       "queued_rows": s.queued_rows, "resident_deltas": len(s.model.table)}
                for spec, s in servers.items()}
