import json
import re

import numpy as np
import open_clip
import pytest
import torch

from clipfit_core.models import create_base_model
from clipfit_core.pretrain import (
    BACKGROUNDS,
    COLOURS,
    ITEMS,
    TEMPLATES,
    CaptionTable,
    FashionMnistMissing,
    PretrainConfig,
    load_fashion_mnist,
    multi_positive_contrastive,
    pretrain_mini,
    render,
    texture_masks,
)


@pytest.fixture(scope="module")
def table():
    return CaptionTable(open_clip.get_tokenizer("clipfit-mini"))


def test_fashion_mnist_reader_and_missing_message(fake_fmnist, tmp_path):
    images, labels = load_fashion_mnist("train", fake_fmnist)
    assert images.shape == (600, 28, 28) and images.dtype == np.uint8
    assert labels.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    with pytest.raises(FashionMnistMissing, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)


def test_rendered_images_show_the_named_colour_and_background():
    items = torch.zeros(len(COLOURS) * len(BACKGROUNDS), 28, 28, dtype=torch.uint8)
    items[:, 8:20, 8:20] = 255  # an opaque square item in the middle
    colours = torch.arange(len(COLOURS)).repeat_interleave(len(BACKGROUNDS))
    backgrounds = torch.arange(len(BACKGROUNDS)).repeat(len(COLOURS))
    out = render(items, colours, backgrounds, torch.Generator().manual_seed(0))
    assert out.shape == (len(items), 3, 28, 28) and 0 <= out.min() and out.max() <= 1
    palette = torch.tensor(list(COLOURS.values()))
    masks = texture_masks()
    for img, c, b in zip(out, colours, backgrounds):
        assert torch.allclose(img[:, 14, 14], palette[c])  # the item is the named colour
        border = torch.ones(28, 28, dtype=torch.bool)
        border[8:20, 8:20] = False
        tones = img[0][border]
        pattern = masks[b][border].bool()
        if BACKGROUNDS[b] == "plain":
            assert tones.max() - tones.min() < 1e-6
        else:  # two grey tones laid out exactly as the texture's pattern
            assert tones[pattern].std() < 1e-6 and tones[~pattern].std() < 1e-6
            assert tones[pattern].mean() > tones[~pattern].mean()
        assert (img[0][border] == img[1][border]).all()  # a grey background, not a colour


def test_captions_match_the_rendered_attributes(table):
    gen = torch.Generator().manual_seed(1)
    n = 500
    items = torch.randint(len(ITEMS), (n,), generator=gen)
    colours = torch.randint(len(COLOURS), (n,), generator=gen)
    backgrounds = torch.randint(len(BACKGROUNDS), (n,), generator=gen)
    ids = table.sample(items, colours, backgrounds, gen)
    names_colour = names_bg = 0
    for item, colour, bg, i in zip(items, colours, backgrounds, ids):
        text = table.captions[i].text
        named_items = [x for x in ITEMS if re.search(rf"(^|\s){re.escape(x)}( on a|\.)", text)]
        assert named_items == [ITEMS[item]], text
        named_colours = [c for c in COLOURS if f" {c} " in text]
        assert named_colours in ([], [list(COLOURS)[colour]])
        named_bgs = [b for b in BACKGROUNDS if f"{b} background" in text]
        assert named_bgs in ([], [BACKGROUNDS[bg]])
        names_colour += bool(named_colours)
        names_bg += bool(named_bgs)
    assert 0.3 * n < names_colour < 0.7 * n and 0.3 * n < names_bg < 0.7 * n
    assert len(table.captions) == len(ITEMS) * sum(
        (len(COLOURS) if c else 1) * (len(BACKGROUNDS) if b else 1) for _, c, b in TEMPLATES)


def test_positives_are_exactly_the_captions_true_of_an_image(table):
    gen = torch.Generator().manual_seed(2)
    n = 64
    items = torch.randint(3, (n,), generator=gen)  # few items: many cross-positives
    colours = torch.randint(2, (n,), generator=gen)
    backgrounds = torch.randint(2, (n,), generator=gen)
    ids = table.sample(items, colours, backgrounds, gen)
    pos = table.positives(items, colours, backgrounds, ids)
    for i in range(n):
        for j in range(n):
            c = table.captions[ids[j]]
            true = c.item == items[i] and c.colour in (None, colours[i]) and \
                c.background in (None, backgrounds[i])
            assert pos[i, j].item() == true
    assert pos.diagonal().all()


def test_multi_positive_loss_reduces_to_clip_loss_with_one_positive():
    logits = torch.randn(6, 6)
    eye = torch.eye(6, dtype=torch.bool)
    clip = 0.5 * (torch.nn.functional.cross_entropy(logits, torch.arange(6))
                  + torch.nn.functional.cross_entropy(logits.T, torch.arange(6)))
    assert torch.allclose(multi_positive_contrastive(logits, eye), clip)
    both = eye.clone()
    both[0, 1] = both[1, 0] = True  # a second positive can only lower the loss
    assert multi_positive_contrastive(logits, both) < multi_positive_contrastive(logits, eye)


def test_pretraining_writes_a_checkpoint_the_base_model_code_loads(fake_fmnist, tmp_path):
    from clipfit_core.models import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError, match="clipfit pretrain-mini"):
        create_base_model("clipfit-mini", cache_dir=tmp_path)
    losses = []
    record = pretrain_mini(tmp_path / "clipfit-mini", PretrainConfig(epochs=2, batch_size=100,
                                                                     warmup_steps=2),
                           data=load_fashion_mnist("train", fake_fmnist),
                           on_step=lambda s, t, l: losses.append(l))
    assert record["steps"] == 12 and len(losses) == 12
    assert json.loads((tmp_path / "clipfit-mini" / "pretrain.json").read_text())["steps"] == 12
    base = create_base_model("clipfit-mini", cache_dir=tmp_path)
    assert base.image_size == 28 and base.pretrained is None
    again = pretrain_mini(tmp_path / "again", PretrainConfig(epochs=2, batch_size=100,
                                                             warmup_steps=2),
                          data=load_fashion_mnist("train", fake_fmnist))
    assert again["final_loss"] == record["final_loss"]  # deterministic for a seed
    assert base.fingerprint == create_base_model(
        f"clipfit-mini:{tmp_path / 'again'}").fingerprint


def test_cli_pretrain_mini_names_the_install_command(tmp_path, capsys):
    from clipfit_core.cli import main

    code = main(["pretrain-mini", "--data", str(tmp_path), "--cache-dir", str(tmp_path)],
                weights_dir=tmp_path)
    assert code == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
    from clipfit_core.synthetic import write_dataset

    data = write_dataset(tmp_path / "data", per_class=1)
    code = main(["eval", str(data), "--model", "clipfit-mini", "--cache-dir", str(tmp_path)],
                weights_dir=tmp_path)
    assert code == 2 and "clipfit pretrain-mini" in capsys.readouterr().err
