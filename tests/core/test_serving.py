"""Many deltas in one forward pass, and the batching thread: results equal classifying each
request alone with its delta applied; splitting, back-pressure, cancellation, eviction."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest
import torch

from clipfit_core.classify import class_text_features, image_features
from clipfit_core.delta import Delta, DeltaConfig, DeltaError, applied, extract_delta
from clipfit_core.models import create_base_model
from clipfit_core.serving import BatchingServer, MixedAdapterModel, Overloaded

CLASSES = ["red", "green", "blue", "yellow", "cyan"]
TEMPLATES = ["a photo of a {}.", "art of the {}."]


def random_deltas(base, n: int, seed: int = 0) -> list[Delta]:
    """Deltas that differ from the base (and each other) in every ClipFit tensor."""
    g = torch.Generator().manual_seed(seed)
    values = extract_delta(base.model)
    return [Delta({k: v * (1 + 0.2 * torch.randn(v.shape, generator=g))
                   + 0.1 * torch.randn(v.shape, generator=g) for k, v in values.items()},
                  DeltaConfig(base_model=base.spec, base_fingerprint=base.fingerprint,
                              classnames=CLASSES, templates=TEMPLATES)) for _ in range(n)]


def alone(reference, pixels, delta):
    """Image and text features of one request, its delta applied to the model (the old way)."""
    with applied(reference, delta):
        return (image_features(reference, pixels),
                class_text_features(reference, CLASSES, TEMPLATES))


@pytest.fixture(scope="module", params=["clipfit-tiny", "ViT-B-32"])
def models(request):
    """(a reference model, a serving model): two loads of the same random-weight base."""
    spec = request.param
    reference = create_base_model(spec, device="cpu")
    reference.model.requires_grad_(False)
    return reference, MixedAdapterModel(create_base_model(spec, device="cpu"), capacity=64)


def test_mixed_batch_equals_each_request_alone(models):
    reference, serving = models
    deltas = [None, *random_deltas(reference, 5)]
    n = 12
    pixels = torch.randn(n, 3, reference.image_size, reference.image_size,
                         generator=torch.Generator().manual_seed(1))
    choice = [i % len(deltas) for i in range(n)]  # every delta, and zero-shot rows
    slots = [serving.table.slot_for(deltas[c]) for c in choice]
    mixed = serving.encode_images(pixels, slots)
    for row, c in enumerate(choice):
        expected_img, expected_text = alone(reference, pixels[row:row + 1], deltas[c])
        assert torch.allclose(mixed[row], expected_img[0], atol=2e-5), (row, c)
        text = serving.text_features(CLASSES, TEMPLATES, deltas[c])
        assert torch.allclose(text, expected_text, atol=1e-6)
        assert torch.allclose(serving.logits(mixed[row:row + 1], text),
                              reference.model.logit_scale.exp() * expected_img @ expected_text.T,
                              atol=1e-3)
    # the deltas matter: a tuned row differs from its zero-shot value
    zero = serving.encode_images(pixels, [0] * n)
    assert not torch.allclose(mixed[1], zero[1], atol=1e-3)
    # one delta for the whole batch runs open_clip's own LayerNorm: bit-identical
    uniform = serving.encode_images(pixels, [slots[1]] * n)
    assert torch.equal(uniform, alone(reference, pixels, deltas[choice[1]])[0])
    # and serving never wrote the base model's parameters
    ref_state = reference.model.state_dict()
    assert all(torch.equal(v, ref_state[k]) for k, v in serving.base.model.state_dict().items())


def test_the_batching_server_merges_concurrent_requests(models):
    reference, serving = models
    deltas = [None, *random_deltas(reference, 7, seed=2)]
    server = BatchingServer(serving, max_batch=8, max_wait_ms=200, max_queue=256)
    try:
        g = torch.Generator().manual_seed(3)
        requests = [(torch.randn(1 + i % 3, 3, reference.image_size, reference.image_size,
                                 generator=g), deltas[i % len(deltas)]) for i in range(16)]
        tickets: list = [None] * len(requests)
        start = threading.Barrier(len(requests))

        def client(i: int) -> None:
            start.wait()
            tickets[i] = server.submit(*requests[i])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for ticket, (pixels, delta) in zip(tickets, requests):
            got = ticket.future.result(timeout=120)
            assert got.shape[0] == pixels.shape[0]
            assert torch.allclose(got, alone(reference, pixels, delta)[0], atol=2e-5)
        rows = sum(p.shape[0] for p, _ in requests)
        assert server.rows == rows
        assert server.batches < len(requests)  # requests shared forward passes
        assert server.mixed_batches >= 1  # ... with different deltas in one pass
    finally:
        server.close()


def test_a_request_larger_than_the_batch_is_split_in_order(models):
    reference, serving = models
    delta = random_deltas(reference, 1, seed=4)[0]
    server = BatchingServer(serving, max_batch=4, max_wait_ms=0)
    try:
        pixels = torch.randn(10, 3, reference.image_size, reference.image_size,
                             generator=torch.Generator().manual_seed(5))
        got = server.submit(pixels, delta).future.result(timeout=120)
        assert server.batches == 3  # 4 + 4 + 2
        assert torch.allclose(got, alone(reference, pixels, delta)[0], atol=2e-5)
    finally:
        server.close()


def running_and_held(server: BatchingServer, rows: int):
    """Submit ``rows`` images and wait until the thread took them into a batch; call with the
    model's forward pass held (``serving._encode_lock``), so that what follows queues up."""
    size = server.model.base.image_size
    ticket = server.submit(torch.zeros(rows, 3, size, size))
    while not server.started_batches:
        threading.Event().wait(0.01)
    return ticket


def test_a_full_queue_refuses_with_a_retry_estimate_then_recovers(models):
    reference, serving = models
    server = BatchingServer(serving, max_batch=2, max_wait_ms=0, max_queue=4)
    size = reference.image_size
    try:
        with serving._encode_lock:
            first = running_and_held(server, 2)
            waiting = [server.submit(torch.zeros(2, 3, size, size)) for _ in range(2)]
            with pytest.raises(Overloaded) as refused:
                server.submit(torch.zeros(1, 3, size, size))
            assert refused.value.queued == 4 and 1 <= refused.value.retry_after <= 60
        for ticket in [first, *waiting]:
            assert ticket.future.result(timeout=120).shape[0] == 2
        assert server.submit(torch.zeros(1, 3, size, size)).future.result(timeout=120) \
            .shape[0] == 1
    finally:
        server.close()


def test_a_cancelled_request_never_reaches_the_model(models):
    reference, serving = models
    server = BatchingServer(serving, max_batch=2, max_wait_ms=0, max_queue=64)
    size = reference.image_size
    try:
        with serving._encode_lock:
            running = running_and_held(server, 2)
            gone = server.submit(torch.zeros(6, 3, size, size))
            kept = server.submit(torch.zeros(1, 3, size, size))
            gone.cancel()
            assert server.queued_rows == 1
        assert kept.future.result(timeout=120).shape[0] == 1
        assert running.future.result(timeout=120).shape[0] == 2
        with pytest.raises(CancelledError):
            gone.future.result(timeout=1)
        assert server.rows == 3  # the six rows of the cancelled request were never run
    finally:
        server.close()


def test_resident_deltas_are_evicted_least_recently_used():
    reference = create_base_model("clipfit-tiny", device="cpu")
    serving = MixedAdapterModel(create_base_model("clipfit-tiny", device="cpu"), capacity=3)
    deltas = random_deltas(reference, 4, seed=6)
    pixels = torch.randn(4, 3, reference.image_size, reference.image_size,
                         generator=torch.Generator().manual_seed(7))
    server = BatchingServer(serving, max_batch=2, max_wait_ms=0)
    try:
        for _ in range(2):  # twice round four deltas with room for two: every load evicts
            for i, delta in enumerate(deltas):
                got = server.submit(pixels[i:i + 1], delta).future.result(timeout=60)
                assert torch.allclose(got, alone(reference, pixels[i:i + 1], delta)[0],
                                      atol=2e-5)
        assert len(serving.table) == 2 and serving.table.weight.shape[0] == 3
        assert serving.table.loads == 8 and serving.table.evictions == 6
        assert serving.table.bytes_per_slot == 4 * sum(  # float32 LayerNorm values
            t.numel() for k, t in deltas[0].tensors.items() if k.startswith("visual."))
    finally:
        server.close()


def test_serial_mode_gives_the_same_answers(models):
    reference, serving = models
    deltas = random_deltas(reference, 3, seed=8)
    server = BatchingServer(serving, max_batch=8, mode="serial")
    try:
        pixels = torch.randn(3, 3, reference.image_size, reference.image_size,
                             generator=torch.Generator().manual_seed(9))
        for delta in deltas:
            got = server.submit(pixels, delta).future.result(timeout=120)
            assert torch.equal(got, alone(reference, pixels, delta)[0])
    finally:
        server.close()
    ref_state = reference.model.state_dict()  # the swap was undone
    assert all(torch.equal(v, ref_state[k]) for k, v in serving.base.model.state_dict().items())


def test_a_delta_of_another_base_is_refused_at_submit():
    tiny = MixedAdapterModel(create_base_model("clipfit-tiny", device="cpu"), capacity=4)
    other = create_base_model("ViT-B-32", device="cpu", fingerprint=False)
    delta = random_deltas(other, 1)[0]
    delta.config.base_fingerprint = tiny.base.fingerprint  # right name, wrong tensors
    server = BatchingServer(tiny)
    try:
        with pytest.raises(DeltaError):
            server.submit(torch.zeros(1, 3, 32, 32), delta)
        assert server.queued_rows == 0
    finally:
        server.close()
