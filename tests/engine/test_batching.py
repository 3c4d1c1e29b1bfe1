from __future__ import annotations

import pytest
import torch

from esper_engine.batching import SharedBatchIterator, check_samples
from esper_engine.tasks import load_task


def numbered(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples that name themselves: x = index, y = 10 * index."""
    x = torch.arange(n)
    return x, x * 10


def draw_ids(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[list[int]]:
    return [x.tolist() for x, _ in batches]


def test_each_draw_gives_every_env_its_own_samples() -> None:
    x, y = numbered(64)
    it = SharedBatchIterator(x, y, n_envs=4, batch_size=5, seed=0)
    batches = next(it)
    assert len(batches) == 4
    ids = [i for bx, by in batches for i in bx.tolist()]
    assert len(ids) == 20 and len(set(ids)) == 20
    for bx, by in batches:
        assert bx.shape == (5,)
        assert torch.equal(by, bx * 10)  # x and y stay paired


def test_same_seed_same_draws_different_seed_different_draws() -> None:
    x, y = numbered(100)
    a = SharedBatchIterator(x, y, n_envs=2, batch_size=8, seed=3)
    b = SharedBatchIterator(x, y, n_envs=2, batch_size=8, seed=3)
    c = SharedBatchIterator(x, y, n_envs=2, batch_size=8, seed=4)
    draws_a = [draw_ids(next(a)) for _ in range(10)]
    assert draws_a == [draw_ids(next(b)) for _ in range(10)]
    assert draws_a != [draw_ids(next(c)) for _ in range(10)]


def test_one_pass_covers_the_dataset_then_reshuffles() -> None:
    x, y = numbered(48)
    it = SharedBatchIterator(x, y, n_envs=2, batch_size=8, seed=0)
    assert it.draws_per_pass == 3
    first = [i for _ in range(3) for ids in draw_ids(next(it)) for i in ids]
    assert sorted(first) == list(range(48))
    assert it.passes == 0
    second = [i for _ in range(3) for ids in draw_ids(next(it)) for i in ids]
    assert it.passes == 1
    assert sorted(second) == list(range(48))
    assert second != first  # a new order each pass


def test_remainder_is_skipped_so_draws_never_repeat_a_sample() -> None:
    x, y = numbered(50)
    it = SharedBatchIterator(x, y, n_envs=2, batch_size=8, seed=1)
    for _ in range(20):  # spans several passes
        ids = [i for ids in draw_ids(next(it)) for i in ids]
        assert len(set(ids)) == 16
    assert it.passes == 6  # 3 draws per pass: draws 4, 7, ..., 19 start passes 1..6


def test_prepare_runs_once_per_draw_on_the_whole_batch() -> None:
    x, y = numbered(40)
    calls: list[int] = []

    def prepare(t: torch.Tensor) -> torch.Tensor:
        calls.append(len(t))
        return t.float() / 2

    it = SharedBatchIterator(x, y, n_envs=3, batch_size=4, seed=0, prepare=prepare)
    batches = next(it)
    assert calls == [12]
    for bx, by in batches:
        assert bx.dtype == torch.float32
        assert torch.equal(by, (bx * 2).long() * 10)  # prepared x still matches its y


def test_task_batches_are_ready_for_a_model() -> None:
    task = load_task("synthetic-images", scale="small")
    it = SharedBatchIterator(
        task.train_x, task.train_y, n_envs=2, batch_size=16, seed=0, prepare=task.prepare
    )
    (x0, y0), (x1, y1) = next(it)
    assert x0.shape == (16, 3, 32, 32) and x0.dtype == torch.float32
    assert y0.dtype == torch.int64 and y1.shape == (16,)
    assert not torch.equal(x0, x1)


def test_language_model_windows_keep_their_shift() -> None:
    task = load_task("synthetic-stories", scale="small")
    it = SharedBatchIterator(
        task.train_x, task.train_y, n_envs=3, batch_size=4, seed=0, prepare=task.prepare
    )
    for x, y in next(it):
        assert x.shape == (4, 64) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1].long())


def test_a_draw_larger_than_the_data_wraps_around_successive_passes() -> None:
    x, y = numbered(5)
    it = SharedBatchIterator(x, y, n_envs=3, batch_size=4, seed=0)
    assert it.draws_per_pass == 0
    ids = []
    for _ in range(5):
        batches = next(it)
        assert [len(bx) for bx, _ in batches] == [4, 4, 4]  # every draw is a full draw
        assert all(torch.equal(by, bx * 10) for bx, by in batches)
        ids.extend(i for bx, _ in batches for i in bx.tolist())
    # 60 samples = 12 whole passes of 5: each run of 5 is one permutation of the dataset
    passes = [ids[i : i + 5] for i in range(0, 60, 5)]
    assert all(sorted(p) == list(range(5)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1  # reshuffled between passes
    assert it.passes == 11  # reshuffles so far: the next draw starts the thirteenth


def test_wrapped_draws_are_deterministic() -> None:
    x, y = numbered(7)
    a = SharedBatchIterator(x, y, n_envs=2, batch_size=5, seed=3)
    b = SharedBatchIterator(x, y, n_envs=2, batch_size=5, seed=3)
    assert [draw_ids(next(a)) for _ in range(6)] == [draw_ids(next(b)) for _ in range(6)]


def test_a_dataset_of_one_sample_still_trains() -> None:
    x, y = numbered(1)
    it = SharedBatchIterator(x, y, n_envs=2, batch_size=3, seed=0)
    assert draw_ids(next(it)) == [[0, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (torch.arange(0), torch.arange(0), "training set is empty"),
        (torch.arange(3), torch.arange(4), "differ in length: 3 vs 4"),
    ],
)
def test_an_empty_or_mismatched_dataset_is_refused(x, y, message) -> None:
    with pytest.raises(ValueError, match=message):
        SharedBatchIterator(x, y, n_envs=1, batch_size=1, seed=0)


def test_check_samples_names_the_split() -> None:
    check_samples("validation set", torch.arange(1), torch.arange(1))
    with pytest.raises(ValueError, match="^validation set is empty$"):
        check_samples("validation set", torch.zeros(0, 3), torch.zeros(0))


def test_a_rank_keeps_exactly_its_envs_slices_of_the_whole_draw() -> None:
    x, y = numbered(50)  # a draw of 4 x 5 = 20 wraps into a new pass every third draw
    whole = SharedBatchIterator(x, y, n_envs=4, batch_size=5, seed=3)
    ranks = [
        SharedBatchIterator(x, y, n_envs=4, batch_size=5, seed=3, keep=block)
        for block in (range(0, 1), range(1, 4))
    ]
    for _ in range(7):
        expected = draw_ids(next(whole))
        assert draw_ids(next(ranks[0])) + draw_ids(next(ranks[1])) == expected


@pytest.mark.parametrize("keep", [range(0), range(2, 5), range(0, 4, 2)])
def test_a_kept_block_must_be_contiguous_and_inside_the_envs(keep: range) -> None:
    x, y = numbered(50)
    with pytest.raises(ValueError, match="contiguous block"):
        SharedBatchIterator(x, y, n_envs=4, batch_size=5, seed=0, keep=keep)
