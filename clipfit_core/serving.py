"""Serving many deltas from one base model in one forward pass.

A ClipFit delta changes only two kinds of tensors: the image tower's LayerNorm weights and
biases, and the text tower's FFN output biases. Text features are computed once per (delta,
classes, templates) and cached, so what must differ per image at serving time is only the
LayerNorm affine transform. :class:`MixedAdapterModel` keeps those of every resident delta in
one stacked table (slot 0: the base model's own values) and runs one image-tower pass over a
batch whose rows each name a slot: every LayerNorm normalizes the row, then applies that row's
weight and bias, gathered from the table. The base model's parameters are never written.

When all rows of a batch use one slot, each LayerNorm runs exactly as open_clip's does with
that slot's values (the result is bit-identical to applying the delta to the model); a mixed
batch normalizes without affine and then scales and shifts each row, which equals it within
float rounding.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNormFp32

from .classify import (
    TextFeatureCache,
    class_features_from_tokens,
    logits_for,
    tokenize_prompts,
)
from .delta import Delta, applied, check_compatible
from .models import BaseModel
from .params import trainable_parameters


class _Rows:
    """What the current forward pass needs from the table: one slot for all rows
    (``uniform``), or per-row weights and biases of shape (B, n_layers, D)."""

    def __init__(self) -> None:
        self.uniform: int | None = None
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None


class _TableLayerNorm(torch.nn.LayerNorm):
    """A visual LayerNorm whose affine values come from the table while a pass is running
    (outside one it is an ordinary LayerNorm with the base model's own parameters, so the
    model keeps its state-dict names and works as before)."""

    def __init__(self, original: torch.nn.LayerNorm, index: int, batch_dim: int,
                 table: AdapterTable, rows: _Rows):
        torch.nn.Module.__init__(self)
        self.normalized_shape = original.normalized_shape
        self.eps = original.eps
        self.elementwise_affine = True
        self.weight = original.weight  # the same Parameter objects: nothing is copied
        self.bias = original.bias
        self.fp32 = isinstance(original, LayerNormFp32)
        self.index = index
        self.batch_dim = batch_dim
        self._table = (table,)  # a tuple: not registered as a submodule
        self._rows = rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig_type = x.dtype
        if self.fp32:
            x = x.to(torch.float32)
        rows = self._rows
        if rows.uniform is None and rows.weight is None:  # not serving: plain LayerNorm
            out = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        elif rows.uniform is not None:
            table = self._table[0]
            out = F.layer_norm(x, self.normalized_shape, table.weight[rows.uniform, self.index],
                               table.bias[rows.uniform, self.index], self.eps)
        else:
            shape = [1] * x.dim()
            shape[self.batch_dim] = x.shape[self.batch_dim]
            shape[-1] = x.shape[-1]
            w = rows.weight[:, self.index].reshape(shape)
            b = rows.bias[:, self.index].reshape(shape)
            out = torch.addcmul(b, F.layer_norm(x, self.normalized_shape, None, None, self.eps),
                                w)
        return out.to(orig_type)


class AdapterTable:
    """The image-tower LayerNorm values of resident deltas, stacked: ``weight`` and ``bias``
    of shape (slots, layers, width) on the model's device, slot 0 holding the base model's.

    Slots are handed out least-recently-used first; ``slot_for`` never evicts a slot named in
    ``keep`` (the batch being assembled). Growth doubles the table up to ``capacity``.
    Not thread-safe: one caller (the inference thread) uses it.
    """

    def __init__(self, layer_names: list[str], base_values: list[tuple[torch.Tensor,
                 torch.Tensor]], capacity: int):
        self.layer_names = layer_names
        self.set_capacity(capacity)
        weight = torch.stack([w.detach() for w, _ in base_values]).unsqueeze(0)
        bias = torch.stack([b.detach() for _, b in base_values]).unsqueeze(0)
        self.weight, self.bias = weight.clone(), bias.clone()
        self._slots: OrderedDict[str, int] = OrderedDict()  # delta id -> slot, LRU order
        self.loads = 0
        self.evictions = 0

    def set_capacity(self, capacity: int) -> None:
        """At most ``capacity`` slots, the base's included (set before the table fills)."""
        if capacity < 2:
            raise ValueError("an adapter table needs room for the base and one delta")
        self.capacity = capacity

    @property
    def bytes_per_slot(self) -> int:
        return 2 * self.weight[0].numel() * self.weight.element_size()

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, delta_id: str) -> bool:
        return delta_id in self._slots

    def _grow(self) -> None:
        size = min(self.capacity, max(2, 2 * self.weight.shape[0]))
        extra = size - self.weight.shape[0]
        self.weight = torch.cat([self.weight, self.weight[:1].expand(extra, -1, -1)])
        self.bias = torch.cat([self.bias, self.bias[:1].expand(extra, -1, -1)])

    def slot_for(self, delta: Delta | None, keep: set[int] = frozenset()) -> int:
        """The delta's slot, loading it (and evicting the least recently used slot that is not
        in ``keep``) when it is not resident. ``None`` is the base model: slot 0."""
        if delta is None:
            return 0
        slot = self._slots.get(delta.id)
        if slot is not None:
            self._slots.move_to_end(delta.id)
            return slot
        used = len(self._slots) + 1
        if used >= self.weight.shape[0] and self.weight.shape[0] < self.capacity:
            self._grow()
        if used < self.weight.shape[0]:
            slot = used
        else:
            victim = next((k for k, s in self._slots.items() if s not in keep), None)
            if victim is None:
                raise RuntimeError("adapter table full of slots in use by one batch")
            slot = self._slots.pop(victim)
            self.evictions += 1
        device = self.weight.device
        for i, name in enumerate(self.layer_names):
            self.weight[slot, i].copy_(delta.tensors[f"{name}.weight"].to(device))
            self.bias[slot, i].copy_(delta.tensors[f"{name}.bias"].to(device))
        self._slots[delta.id] = slot
        self.loads += 1
        return slot


def _visual_layer_norms(model: torch.nn.Module) -> list[str]:
    """Module names (``visual.…``) of the image tower's LayerNorms, in model order."""
    names = []
    for name in trainable_parameters(model):
        if name.startswith("visual.") and name.endswith(".weight"):
            names.append(name[: -len(".weight")])
    return names


class MixedAdapterModel:
    """One base model serving any mix of deltas per batch.

    Takes ownership of ``base``: its visual LayerNorms are replaced by table-reading ones
    (keeping the same parameters and names), so the base must not be trained or swapped into
    elsewhere. ``encode_images`` is meant for one thread (the inference thread); text features
    may be computed from other threads at the same time (they read only the text tower).
    """

    def __init__(self, base: BaseModel, *, capacity: int = 256, text_cache_size: int = 256):
        self.base = base
        model = base.model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self._params = trainable_parameters(model)
        self.text_names = [n for n in self._params if not n.startswith("visual.")]
        layer_names = _visual_layer_norms(model)
        modules = dict(model.named_modules())
        width = {tuple(modules[n].normalized_shape) for n in layer_names}
        if len(width) != 1:
            raise ValueError(f"image-tower LayerNorms of different widths: {sorted(width)}")
        self.table = AdapterTable(
            layer_names, [(modules[n].weight, modules[n].bias) for n in layer_names], capacity)
        self._rows = _Rows()
        batch_first = getattr(model.visual.transformer, "batch_first", True)
        for i, name in enumerate(layer_names):
            parent_name, _, attr = name.rpartition(".")
            inside_blocks = ".transformer.resblocks." in name
            batch_dim = 0 if batch_first or not inside_blocks else 1
            setattr(modules[parent_name], attr,
                    _TableLayerNorm(modules[name], i, batch_dim, self.table, self._rows))
        self.text_cache = TextFeatureCache(text_cache_size)
        self._text_module = _TextFeatures(model)
        self._text_lock = threading.Lock()
        self._encode_lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.base.device

    def check(self, delta: Delta) -> None:
        """Refuse a delta of another base, or with other tensors (DeltaError)."""
        check_compatible(self.base, delta)

    # ------------------------------------------------------------------ text

    @torch.no_grad()
    def text_features(self, classnames: Sequence[str], templates: Sequence[str],
                      delta: Delta | None = None) -> torch.Tensor:
        """Normalized (C, D) float32 class features with the delta's text biases, cached by
        (delta, classes, templates). The model's own parameters are not written: the delta's
        biases are passed to a functional call of the text tower."""
        key = (delta.id if delta is not None else "", tuple(classnames), tuple(templates))
        feats = self.text_cache.get(key)
        if feats is not None:
            return feats
        device = self.device
        overrides = {} if delta is None else {
            f"model.{name}": delta.tensors[name].to(device) for name in self.text_names}
        n_t = len(templates)
        per_batch = max(1, 1024 // n_t)
        chunks = []
        with self._text_lock:  # functional_call re-points parameters of the text modules
            for i in range(0, len(classnames), per_batch):
                tokens = tokenize_prompts(self.base, list(classnames[i:i + per_batch]),
                                          list(templates))
                chunks.append(torch.func.functional_call(
                    self._text_module, overrides, (tokens, n_t), strict=False,
                    tie_weights=False) if overrides
                    else class_features_from_tokens(self.base.model, tokens, n_t))
        feats = torch.cat(chunks).float()
        self.text_cache.put(key, feats)
        return feats

    # ------------------------------------------------------------------ images

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, slots: Sequence[int] | torch.Tensor
                      ) -> torch.Tensor:
        """Normalized float32 image features, row i computed with the delta in ``slots[i]``
        (slots from ``table.slot_for``; 0 is zero-shot)."""
        slots = torch.as_tensor(slots, dtype=torch.long)
        if slots.numel() != pixels.shape[0]:
            raise ValueError(f"{pixels.shape[0]} images but {slots.numel()} slots")
        device = self.device
        with self._encode_lock:
            rows = self._rows
            first = int(slots[0]) if slots.numel() else 0
            if bool((slots == first).all()):
                rows.uniform = first
            else:
                index = slots.to(device, non_blocking=True)
                rows.weight = self.table.weight.index_select(0, index)
                rows.bias = self.table.bias.index_select(0, index)
            try:
                pixels = pixels.to(device, non_blocking=True)
                with inference_autocast(device):
                    feats = self.base.model.encode_image(pixels)
            finally:
                rows.uniform = rows.weight = rows.bias = None
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def encode_swapped(self, pixels: torch.Tensor, delta: Delta | None) -> torch.Tensor:
        """The path before batching: the delta copied into the model for this pass (and
        text work held off meanwhile, since the text biases change too), then restored."""
        with self._text_lock, self._encode_lock, applied(self.base, delta):
            pixels = pixels.to(self.device, non_blocking=True)
            with inference_autocast(self.device):
                feats = self.base.model.encode_image(pixels)
        return F.normalize(feats.float(), dim=-1)

    def logits(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        return logits_for(self.base, image_feats, text_feats)


class _TextFeatures(torch.nn.Module):
    """``class_features_from_tokens`` as a module, for ``torch.func.functional_call``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, n_templates: int) -> torch.Tensor:
        return class_features_from_tokens(self.model, tokens, n_templates)


def inference_autocast(device: torch.device):
    """bf16 (else fp16) autocast on CUDA; nothing elsewhere (CPU runs float32)."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


# ---------------------------------------------------------------------- dynamic batching


class Overloaded(RuntimeError):
    """The batch queue is full; ``retry_after`` estimates when it will have room (seconds)."""

    def __init__(self, queued: int, retry_after: float):
        super().__init__(f"{queued} images are waiting to be classified")
        self.queued = queued
        self.retry_after = retry_after


class ServerClosed(RuntimeError):
    """The batching server was stopped."""


@dataclass(eq=False)
class Ticket:
    """One submitted request: its image rows, its delta, and a future for its (N, D)
    normalized image features (rows in submission order)."""

    pixels: torch.Tensor
    delta: Delta | None
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)
    next_row: int = 0  # rows before this one are in a batch already
    done_rows: int = 0
    cancelled: bool = False
    _out: torch.Tensor | None = None
    _server: BatchingServer | None = None

    @property
    def rows(self) -> int:
        return self.pixels.shape[0]

    def cancel(self) -> None:
        """Drop the rows not yet in a batch (the client is gone)."""
        if self._server is not None:
            self._server._cancel(self)


class BatchingServer:
    """Merges concurrent requests into batches on one inference thread per model.

    ``submit`` queues a request's preprocessed images (any number: a request larger than
    ``max_batch`` is split across batches) and returns a :class:`Ticket`. The thread takes up
    to ``max_batch`` rows from the front of the queue, waiting at most ``max_wait_ms`` after
    the oldest row arrived for a batch to fill; rows of different deltas share the batch
    (``MixedAdapterModel``). At most ``max_queue`` rows wait (a single larger request is
    accepted when nothing waits); beyond that ``submit`` raises :class:`Overloaded`.

    ``mode="serial"`` runs each request alone, its delta applied to the model for the
    duration (the path before batching, kept for comparison).
    """

    def __init__(self, model: MixedAdapterModel, *, max_batch: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 1024, mode: str = "batched",
                 name: str = "model"):
        if mode not in ("batched", "serial"):
            raise ValueError(f"mode must be 'batched' or 'serial', not {mode!r}")
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be positive")
        self.model = model
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.mode = mode
        self._queue: deque[Ticket] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self._checked: set[str] = set()
        self.started_batches = 0
        self.batches = 0  # finished
        self.rows = 0
        self.busy_seconds = 0.0  # time spent running batches
        self.mixed_batches = 0
        self.rows_per_second = 0.0  # moving average, for Retry-After
        self._thread = threading.Thread(target=self._loop, name=f"clipfit-inference-{name}",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ clients

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def submit(self, pixels: torch.Tensor, delta: Delta | None = None) -> Ticket:
        if delta is not None and delta.id not in self._checked:
            self.model.check(delta)
            self._checked.add(delta.id)
        ticket = Ticket(pixels, delta, _server=self)
        if ticket.rows == 0:
            ticket.future.set_result(torch.empty(0, 0))
            return ticket
        with self._cond:
            if self._closed:
                raise ServerClosed("the inference server is stopped")
            if self._queued_rows and self._queued_rows + ticket.rows > self.max_queue:
                # the time to work off the queue at the measured rate (1 to 60 s; 5 s before
                # any batch has finished, when there is no rate yet)
                wait = (self._queued_rows + ticket.rows) / self.rows_per_second \
                    if self.rows_per_second else 5.0
                raise Overloaded(self._queued_rows, retry_after=min(60.0, max(1.0, wait)))
            self._queue.append(ticket)
            self._queued_rows += ticket.rows
            self._cond.notify()
        return ticket

    def _cancel(self, ticket: Ticket) -> None:
        with self._cond:
            if ticket.cancelled or ticket.future.done():
                return
            ticket.cancelled = True
            if ticket in self._queue:
                self._queued_rows -= ticket.rows - ticket.next_row
                self._queue.remove(ticket)
            ticket.future.cancel()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread after the batch in progress; waiting requests get ServerClosed."""
        with self._cond:
            self._closed = True
            waiting, self._queue = list(self._queue), deque()
            self._queued_rows = 0
            self._cond.notify_all()
        for ticket in waiting:
            if not ticket.future.done():
                ticket.future.set_exception(ServerClosed("the inference server is stopped"))
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the thread

    def _take(self) -> list[tuple[Ticket, int, int]] | None:
        """The next batch: (ticket, first row, end row) pieces, at most ``max_batch`` rows."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            limit = self.max_batch
            if self.mode == "batched":
                deadline = self._queue[0].submitted + self.max_wait
                while self._queued_rows < limit and not self._closed:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._closed or not self._queue:
                    return None if self._closed else []
            pieces, taken = [], 0
            while self._queue and taken < limit:
                ticket = self._queue[0]
                end = min(ticket.rows, ticket.next_row + limit - taken)
                pieces.append((ticket, ticket.next_row, end))
                taken += end - ticket.next_row
                ticket.next_row = end
                if end == ticket.rows:
                    self._queue.popleft()
                if self.mode == "serial":
                    break  # one request at a time
            self._queued_rows -= taken
            self.started_batches += 1
            return pieces

    def _loop(self) -> None:
        while True:
            pieces = self._take()
            if pieces is None:
                return
            if not pieces:
                continue
            started = time.perf_counter()
            try:
                feats = self._run(pieces)
            except Exception as e:  # noqa: BLE001 (the batch's requests get the error)
                for ticket, _, _ in pieces:
                    if not ticket.future.done():
                        ticket.future.set_exception(e)
                continue
            rows = feats.shape[0]
            elapsed = max(time.perf_counter() - started, 1e-6)
            self.busy_seconds += elapsed
            self.rows_per_second = rows / elapsed if not self.rows_per_second else \
                0.8 * self.rows_per_second + 0.2 * rows / elapsed
            self.batches += 1
            self.rows += rows
            offset = 0
            for ticket, start, end in pieces:
                n = end - start
                if not ticket.cancelled:
                    if ticket._out is None:
                        ticket._out = feats.new_empty(ticket.rows, feats.shape[1])
                    ticket._out[start:end] = feats[offset:offset + n]
                    ticket.done_rows += n
                    if ticket.done_rows == ticket.rows and not ticket.future.done():
                        ticket.future.set_result(ticket._out)
                offset += n

    def _run(self, pieces: list[tuple[Ticket, int, int]]) -> torch.Tensor:
        pixels = [t.pixels[s:e] for t, s, e in pieces]
        pixels = pixels[0] if len(pixels) == 1 else torch.cat(pixels)
        if self.mode == "serial":
            return self.model.encode_swapped(pixels, pieces[0][0].delta)
        slots, keep = [], set()
        for ticket, start, end in pieces:
            slot = self.model.table.slot_for(ticket.delta, keep)
            keep.add(slot)
            slots.extend([slot] * (end - start))
        if len(keep) > 1:
            self.mixed_batches += 1
        return self.model.encode_images(pixels, slots)
