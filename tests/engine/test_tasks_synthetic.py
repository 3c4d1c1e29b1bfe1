from __future__ import annotations

import math
import re

import pytest
import torch

from esper_engine.tasks import STORY_SEPARATOR, TASK_NAMES, load_task
from esper_engine.tasks.synthetic_images import TEXTURES
from esper_engine.tasks.synthetic_stories import NAMES, POSSESSIVE


@pytest.fixture(scope="module")
def images():
    return load_task("synthetic-images", seed=0, scale="small")


@pytest.fixture(scope="module")
def stories():
    return load_task("synthetic-stories", seed=0, scale="small")


def test_unknown_task_names_the_known_ones() -> None:
    with pytest.raises(ValueError) as info:
        load_task("mnist")
    for name in TASK_NAMES:
        assert name in str(info.value)


def test_unknown_scale_is_refused() -> None:
    with pytest.raises(ValueError, match="scale"):
        load_task("synthetic-images", scale="huge")


def test_images_are_uint8_with_balanced_labels(images) -> None:
    assert images.kind == "classification" and images.host_kind == "cnn"
    assert images.num_classes == 10
    assert images.random_guess_loss == pytest.approx(math.log(10))
    assert images.train_x.shape == (400, 3, 32, 32) and images.train_x.dtype == torch.uint8
    assert images.val_x.shape == (200, 3, 32, 32)
    assert torch.bincount(images.train_y, minlength=10).tolist() == [40] * 10
    assert torch.bincount(images.val_y, minlength=10).tolist() == [20] * 10
    assert 0 < images.seed_lr <= images.host_lr <= 0.3  # SGD with momentum 0.9 and clipping


def test_images_are_deterministic_per_seed(images) -> None:
    again = load_task("synthetic-images", seed=0, scale="small")
    other = load_task("synthetic-images", seed=1, scale="small")
    assert torch.equal(again.train_x, images.train_x)
    assert torch.equal(again.val_y, images.val_y)
    assert not torch.equal(other.train_x, images.train_x)
    assert not torch.equal(images.train_x[:200], images.val_x)  # val is a fresh draw


def test_prepare_normalises_to_float(images) -> None:
    x = images.prepare(images.train_x)
    assert x.dtype == torch.float32
    per_channel = x.transpose(0, 1).reshape(3, -1)
    assert per_channel.mean(1).abs().max() < 0.05
    assert (per_channel.std(1) - 1).abs().max() < 0.05


def test_stripe_orientation_follows_the_label(images) -> None:
    # Texture 0 stripes run across x (0 degrees), texture 1 across y (90 degrees).
    assert TEXTURES[0][0] == 0.0 and TEXTURES[1][0] == 90.0
    x = images.train_x.float()
    across_x = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    across_y = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    texture = images.train_y // 2
    assert (across_x > across_y)[texture == 0].float().mean() > 0.9
    assert (across_y > across_x)[texture == 1].float().mean() > 0.9


def test_classification_loss_and_metrics(images) -> None:
    y = images.val_y[:8]
    uniform = torch.zeros(8, 10)
    assert images.loss(uniform, y).item() == pytest.approx(math.log(10))
    perfect = torch.nn.functional.one_hot(y, 10).float()
    assert images.correct(perfect, y).item() == 8
    assert images.correct(-perfect, y).item() == 0
    assert images.count(y) == 8


def test_stories_are_byte_windows_shifted_by_one(stories) -> None:
    assert stories.kind == "language_model" and stories.host_kind == "transformer"
    assert stories.num_classes == 256 and stories.seq_len == 64
    assert stories.random_guess_loss == pytest.approx(math.log(256))
    x, y = stories.train_x, stories.train_y
    assert x.shape == y.shape and x.shape[1] == 64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y[:-1, -1], x[1:, 0])  # windows tile the stream: every byte is a target
    assert len(stories.val_x) > 0


def test_stories_follow_the_grammar(stories) -> None:
    stream = torch.cat([stories.train_x.reshape(-1), stories.train_y[-1, -1:]])
    text = bytes(stream.tolist()).decode("ascii")
    tales = text.split(STORY_SEPARATOR.decode())[:-1]  # the tail may be cut off
    assert len(tales) > 10
    for tale in tales:
        assert tale[0].isupper() and tale[-1] in ".!"
        assert tale.count('"') % 2 == 0  # quotes close
    # Pronouns agree with the names they refer to.
    agreements = re.findall(r"(\w+) was sad because (she|he) lost (her|his) ", text)
    assert len(agreements) > 10
    for name, pronoun, possessive in agreements:
        assert name in NAMES[pronoun] and possessive == POSSESSIVE[pronoun]


def test_stories_are_deterministic_per_seed(stories) -> None:
    again = load_task("synthetic-stories", seed=0, scale="small")
    other = load_task("synthetic-stories", seed=1, scale="small")
    assert torch.equal(again.train_x, stories.train_x)
    assert torch.equal(again.val_x, stories.val_x)
    assert not torch.equal(other.train_x[:10], stories.train_x[:10])
    assert not torch.equal(stories.val_x[:10], stories.train_x[:10])


def test_language_model_loss_and_metrics_cover_every_token(stories) -> None:
    x, y = stories.prepare(stories.train_x[:4]), stories.train_y[:4]
    assert x.dtype == torch.int64
    uniform = torch.zeros(4, 64, 256)
    assert stories.loss(uniform, y).item() == pytest.approx(math.log(256))
    perfect = torch.nn.functional.one_hot(y.long(), 256).float()
    assert stories.correct(perfect, y).item() == 4 * 64
    assert stories.count(y) == 4 * 64
