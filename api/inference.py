"""The inference engine: one base model per process, deltas in an LRU, text features cached
(by clipfit_core's Classifier), the images of a request as one batch."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from cachetools import LRUCache

from clipfit_core.classify import Classifier
from clipfit_core.delta import Delta
from clipfit_core.models import create_base_model, resolve_device
from registry import crud
from registry.models import Adapter
from registry.settings import Settings


@dataclass(frozen=True)
class AdapterInfo:
    """What classification needs of an adapter row: kept with its delta, so that a cached
    adapter keeps answering while the database is away."""

    id: str
    tenant_id: str
    base_model: str
    classnames: list[str]
    templates: list[str]
    weights_sha256: str
    config: dict

    @classmethod
    def of(cls, row: Adapter) -> AdapterInfo:
        return cls(row.id, row.tenant_id, row.base_model, list(row.classnames),
                   list(row.templates), row.weights_sha256, dict(row.config))


class InferenceEngine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._classifiers: dict[str, Classifier] = {}
        self._deltas: LRUCache[str, tuple[AdapterInfo, Delta]] = LRUCache(
            maxsize=settings.delta_cache_size)
        self._lock = threading.Lock()
        self.delta_hits = 0
        self.delta_misses = 0

    def classifier(self, spec: str) -> Classifier:
        """The base model's classifier, loaded on first use: a copy of its own, never the
        embedded worker's (training changes that one in place)."""
        with self._lock:
            if spec not in self._classifiers:
                base = create_base_model(spec, device=resolve_device(self.settings.device),
                                         cache_dir=self.settings.weights_dir)
                self._classifiers[spec] = Classifier(base, batch_size=256)
            return self._classifiers[spec]

    def delta(self, session, adapter: AdapterInfo) -> Delta:
        with self._lock:
            cached = self._deltas.get(adapter.id)
            if cached is not None:
                self.delta_hits += 1
                return cached[1]
            self.delta_misses += 1
        weights = crud.get_blob(session, sha256=adapter.weights_sha256)
        delta = Delta.from_bytes(weights, adapter.config)
        with self._lock:
            self._deltas[adapter.id] = (adapter, delta)
        return delta

    def cached_adapter(self, adapter_id: str, tenant_id: str) -> AdapterInfo | None:
        """The adapter as last loaded, when its delta is resident (and the tenant's)."""
        with self._lock:
            cached = self._deltas.get(adapter_id)
        if cached is None or cached[0].tenant_id != tenant_id:
            return None
        return cached[0]

    def forget(self, adapter_id: str) -> None:
        with self._lock:
            self._deltas.pop(adapter_id, None)

    def text_cache_stats(self) -> tuple[int, int]:
        hits = sum(c.text_cache.hits for c in self._classifiers.values())
        misses = sum(c.text_cache.misses for c in self._classifiers.values())
        return hits, misses
