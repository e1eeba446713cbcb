import pytest
import torch
import torch.nn.functional as F

from clipfit_core.classify import Classifier, class_text_features, encode_text
from clipfit_core.data import open_image
from clipfit_core.delta import Delta, DeltaConfig, applied, extract_delta
from clipfit_core.models import create_base_model
from clipfit_core.prompts import DATASET_TEMPLATES, resolve_templates

CLASSES = ["red", "green", "blue", "yellow"]


def by_hand(base, paths, classes, templates):
    """CLIP zero-shot straight from open_clip's encoders."""
    model = base.model
    with torch.no_grad():
        pixels = torch.stack([base.eval_transform()(open_image(p)) for p in paths])
        img = F.normalize(model.encode_image(pixels), dim=-1)
        per_class = []
        for c in classes:
            t = F.normalize(model.encode_text(base.tokenizer([t.format(c) for t in templates])),
                            dim=-1)
            per_class.append(F.normalize(t.mean(0), dim=-1))
        text = torch.stack(per_class)
        return (model.logit_scale.exp() * img @ text.T).softmax(-1)


@pytest.mark.parametrize("templates", [["a photo of a {}."],
                                       ["a photo of a {}.", "a sketch of the {}."]])
def test_classification_equals_the_encoders_by_hand(tiny, colour_test, templates):
    paths = sorted(colour_test.rglob("*.png"))[:10]
    expected = by_hand(tiny, paths, CLASSES, templates)
    preds = Classifier(tiny).classify(paths, CLASSES, templates, top_k=2)
    for row, pred in zip(expected, preds):
        top = row.topk(2)
        assert pred.labels == [CLASSES[i] for i in top.indices]
        assert pred.probs == pytest.approx(top.values.tolist(), abs=1e-5)


def test_classification_with_a_delta_uses_the_tuned_weights(tiny, colour_test):
    tensors = {k: v * 1.1 + 0.05 for k, v in extract_delta(tiny.model).items()}
    delta = Delta(tensors, DeltaConfig(base_model=tiny.spec, base_fingerprint=tiny.fingerprint,
                                       classnames=CLASSES, templates=["a photo of a {}."]))
    paths = sorted(colour_test.rglob("*.png"))[:6]
    with applied(tiny, delta):
        expected = by_hand(tiny, paths, CLASSES, ["a photo of a {}."])
    zero_shot = by_hand(tiny, paths, CLASSES, ["a photo of a {}."])
    logits = Classifier(tiny).logits(paths, CLASSES, ["a photo of a {}."], delta)
    assert torch.allclose(logits.softmax(-1), expected, atol=1e-5)
    assert not torch.allclose(expected, zero_shot, atol=1e-3)


def test_truncated_text_encoder_equals_open_clip():
    base = create_base_model("ViT-B-32", fingerprint=False)
    tokens = base.tokenizer(["a photo of a dog.", "a centered satellite photo of annual crop."])
    with torch.no_grad():
        assert torch.allclose(encode_text(base.model, tokens), base.model.encode_text(tokens),
                              atol=1e-5)


def test_text_features_are_cached_per_delta_classes_and_templates(tiny):
    clf = Classifier(tiny)
    a = clf.text_features(CLASSES, ["a photo of a {}."])
    b = clf.text_features(CLASSES, ["a photo of a {}."])
    assert a is b and clf.text_cache.hits == 1
    clf.text_features(CLASSES[:2], ["a photo of a {}."])
    assert clf.text_cache.misses == 2 and len(clf.text_cache) == 2
    assert torch.allclose(a, class_text_features(tiny, CLASSES, ["a photo of a {}."]))


def test_template_names_ensembles_and_errors():
    assert resolve_templates("oxford_pets") == ["a photo of a {}, a type of pet."]
    assert resolve_templates("eurosat") == [DATASET_TEMPLATES["eurosat"]]
    assert resolve_templates("a drawing of {}") == ["a drawing of {}"]
    assert len(resolve_templates("imagenet80")) == 80
    assert resolve_templates(None) == ["a photo of a {}."]
    with pytest.raises(ValueError, match="template name"):
        resolve_templates("oxford_pet")
    assert resolve_templates("{{literal}} braces and a {}") == ["{{literal}} braces and a {}"]


@pytest.mark.parametrize("template", [
    "{{}}", "{{}}{0:x>20000000}", "{} {x}", "{:{}}", "{0}", "{!r}", "{:>9}", "{.real}",
    "{[0]}", "{} and {}", "{", "}", "no placeholder", "a {} " + "x" * 400,
])
def test_templates_that_could_run_code_or_blow_up_are_refused(template):
    with pytest.raises(ValueError, match="template"):
        resolve_templates(template)


def test_class_names_are_checked_together():
    from clipfit_core.prompts import classname_problems

    assert classname_problems(["cat", "dog"]) == []
    problems = classname_problems(["", " cat", "x" * 101, "a\x00b", "dog", "dog"], max_count=5)
    assert problems[0] == "6 classes, the limit is 5"
    assert [p.split(" ")[-1] for p in problems[1:5]] == ["empty", "spaces", "100", "characters"]
    assert problems[5] == "duplicate class names: 'dog'"


def test_top_k_is_capped_and_batches_agree(tiny, colour_test):
    paths = sorted(colour_test.rglob("*.png"))[:9]
    one = Classifier(tiny, batch_size=1).logits(paths, CLASSES, ["a photo of a {}."])
    all_ = Classifier(tiny, batch_size=64).logits(paths, CLASSES, ["a photo of a {}."])
    assert torch.allclose(one, all_, atol=1e-5)
    preds = Classifier(tiny).classify(paths[:1], CLASSES[:2], top_k=5)
    assert len(preds[0].labels) == 2 and sum(preds[0].probs) == pytest.approx(1.0)


def test_batched_preprocess_is_bit_identical_to_eval_transform(tiny):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
              for h, w in [(40, 60), (300, 200), (32, 32), (17, 90)]]
    images.append(Image.fromarray(rng.integers(0, 255, (50, 50), dtype=np.uint8)))  # grey
    transform = tiny.eval_transform()
    expected = torch.stack([transform(im.convert("RGB")) for im in images])
    assert torch.equal(tiny.preprocess(images), expected)


def test_predict_divides_by_the_temperature_and_rejects_below_the_threshold():
    from clipfit_core.classify import UNKNOWN, predict

    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.1, 0.0]])
    plain = predict(logits, ["a", "b", "c"], top_k=2)
    assert [p.labels for p in plain] == [["a", "b"], ["b", "a"]]
    assert plain[0].probs == pytest.approx(logits[0].softmax(-1)[:2].tolist())
    assert not any(p.unknown for p in plain)
    hot = predict(logits, ["a", "b", "c"], temperature=2.0, top_k=1)
    assert hot[0].probs == pytest.approx([(logits[0] / 2).softmax(-1)[0].item()])
    assert hot[0].labels == ["a"]  # the ranking does not change
    # the threshold is compared with the unrounded top probability: equal is kept
    top = logits.softmax(-1).max(-1).values
    at = predict(logits, ["a", "b", "c"], threshold=top[0].item(), top_k=5)
    assert not at[0].unknown and at[1].unknown  # row 2's top is ~0.36 < row 1's ~0.67
    answer = at[1].to_dict()
    assert answer["label"] == UNKNOWN and answer["unknown"] is True
    assert [t["label"] for t in answer["top_k"]] == ["b", "a", "c"]  # top-k still given
    assert answer["top_k"][0]["prob"] == round(at[1].probs[0], 6)
    assert predict(torch.empty(0, 3), ["a", "b", "c"]) == []


def test_classifier_classify_answers_unknown_as_predict_does(tiny, colour_test):
    from clipfit_core.classify import predict

    paths = sorted(colour_test.rglob("*.png"))[:6]
    clf = Classifier(tiny)
    logits = clf.logits(paths, CLASSES, ["a photo of a {}."])
    expected = predict(logits, CLASSES, temperature=0.5, threshold=0.6, top_k=2)
    got = clf.classify(paths, CLASSES, ["a photo of a {}."], top_k=2, temperature=0.5,
                       threshold=0.6)
    assert [p.to_dict() for p in got] == [p.to_dict() for p in expected]
    everything = clf.classify(paths, CLASSES, ["a photo of a {}."], threshold=1.0)
    assert all(p.unknown for p in everything)


FITTED = {"calibration": {"temperature": 0.5, "threshold": 0.7}}
NO_THRESHOLD = ("this adapter has no rejection threshold (it kept no held-out images, or was "
                "trained before thresholds); give a threshold")


@pytest.mark.parametrize("config, kwargs, expected", [
    # the adapter's temperature: its own classes and templates, calibrated on
    (FITTED, {"own_classes": True}, (0.5, None)),
    (FITTED, {"own_classes": True, "calibrated": False}, (1.0, None)),
    (FITTED, {"own_classes": False}, (1.0, None)),
    (None, {"own_classes": True}, (1.0, None)),  # zero-shot
    ({"calibration": None}, {"own_classes": True}, (1.0, None)),  # trained before calibration
    # its threshold with reject_unknown; a given threshold wins, anywhere
    (FITTED, {"own_classes": True, "reject_unknown": True}, (0.5, 0.7)),
    (FITTED, {"own_classes": True, "reject_unknown": True, "threshold": 0.2}, (0.5, 0.2)),
    (FITTED, {"own_classes": False, "reject_unknown": True, "threshold": 0.2}, (1.0, 0.2)),
    (None, {"own_classes": False, "threshold": 0.3}, (1.0, 0.3)),
    (FITTED, {"own_classes": True, "calibrated": False, "reject_unknown": True,
              "threshold": 0.9}, (1.0, 0.9)),
])
def test_calibration_for_applies_the_fitted_values_to_their_own_classes(config, kwargs,
                                                                         expected):
    from clipfit_core.classify import calibration_for

    temperature, threshold, problems = calibration_for(config, **kwargs)
    assert (temperature, threshold, problems) == (*expected, [])


@pytest.mark.parametrize("config, kwargs, message", [
    (None, {"own_classes": False},
     "reject_unknown uses an adapter's threshold; for zero-shot give a threshold"),
    (FITTED, {"own_classes": False},
     ("reject_unknown uses the threshold fitted for the adapter's own classes and templates; "
      "with others give a threshold")),
    ({"calibration": {"temperature": 0.5, "threshold": None}}, {"own_classes": True},
     NO_THRESHOLD),
    ({}, {"own_classes": True}, NO_THRESHOLD),
    (FITTED, {"own_classes": True, "calibrated": False},
     ("the adapter's threshold is on calibrated probabilities: leave calibrated on, or give "
      "a threshold")),
])
def test_calibration_for_names_why_reject_unknown_cannot_apply(config, kwargs, message):
    from clipfit_core.classify import calibration_for

    _, threshold, problems = calibration_for(config, reject_unknown=True, **kwargs)
    assert problems == [message] and threshold is None
