"""The batch plans' guarantees: random = per-epoch permutations, pk = P classes × K samples."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.engine.config import ConfigError
from bench.engine.sampling import make_batches, pk_batches, random_batches


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def labels_of(sizes: list[int]) -> torch.Tensor:
    """Labels with sizes[c] samples of class 3c + 1 (non-contiguous class ids), shuffled."""
    labels = torch.cat([torch.full((n,), 3 * c + 1) for c, n in enumerate(sizes)])
    return labels[torch.randperm(len(labels), generator=generator(99))]


@pytest.mark.parametrize(("n", "batch_size", "steps"), [(10, 4, 7), (12, 4, 3), (5, 8, 4), (100, 32, 10)])
def test_random_is_consecutive_chunks_of_per_epoch_permutations(n: int, batch_size: int, steps: int) -> None:
    plan = random_batches(n, batch_size, steps, generator())
    assert plan.shape == (steps, batch_size) and plan.dtype == torch.int64
    stream = plan.flatten()
    for start in range(0, len(stream), n):
        epoch = stream[start:start + n]
        assert len(set(epoch.tolist())) == len(epoch)  # a full epoch is a permutation, a partial one a part of it
        assert epoch.min() >= 0 and epoch.max() < n
    if len(stream) >= n:
        assert sorted(stream[:n].tolist()) == list(range(n))


def test_random_is_seeded() -> None:
    assert torch.equal(random_batches(50, 8, 20, generator(1)), random_batches(50, 8, 20, generator(1)))
    assert not torch.equal(random_batches(50, 8, 20, generator(1)), random_batches(50, 8, 20, generator(2)))
    epochs = random_batches(50, 10, 10, generator(1)).view(2, 50)
    assert not torch.equal(epochs[0], epochs[1])  # every epoch is shuffled anew


def test_pk_with_enough_classes_has_p_distinct_classes_of_k_each() -> None:
    labels = labels_of([30] * 20)
    plan = pk_batches(labels, batch_size=24, samples_per_class=4, steps=50, generator=generator())
    assert plan.shape == (50, 24)
    seen_classes = set()
    for batch in plan:
        classes, counts = torch.unique(labels[batch], return_counts=True)
        assert len(classes) == 6 and counts.tolist() == [4] * 6
        assert len(set(batch.tolist())) == 24  # classes of 30 members: no repeats within a batch
        seen_classes |= set(classes.tolist())
    assert seen_classes == set(labels.tolist())


def test_pk_with_fewer_classes_than_slots_spreads_all_classes_evenly() -> None:
    labels = labels_of([60] * 10)  # like MNIST at B = 64, K = 4: 16 slots, 10 classes
    plan = pk_batches(labels, batch_size=64, samples_per_class=4, steps=30, generator=generator())
    for batch in plan:
        classes, counts = torch.unique(labels[batch], return_counts=True)
        assert len(classes) == 10
        assert sorted(counts.tolist()) == [4] * 4 + [8] * 6  # ⌊16/10⌋ or ⌈16/10⌉ slots of K each


def test_pk_takes_each_class_in_shuffles_cut_to_a_multiple_of_k() -> None:
    sizes = [7, 12, 5, 9]
    labels = labels_of(sizes)
    plan = pk_batches(labels, batch_size=4, samples_per_class=2, steps=60, generator=generator())
    stream = plan.flatten()
    for c, size in enumerate(sizes):
        members = set(torch.nonzero(labels == 3 * c + 1).flatten().tolist())
        taken = stream[labels[stream] == 3 * c + 1].tolist()
        usable = size - size % 2
        passes = [taken[start:start + usable] for start in range(0, len(taken), usable)]
        assert len(passes) >= 3
        for part in passes:
            assert len(set(part)) == len(part) and set(part) <= members
        counts = torch.bincount(torch.tensor(taken))[sorted(members)]
        assert counts.max() - counts.min() <= len(passes)


def test_pk_samples_small_classes_with_replacement() -> None:
    labels = labels_of([2, 50, 1, 50])
    plan = pk_batches(labels, batch_size=8, samples_per_class=4, steps=40, generator=generator())
    for batch in plan:
        classes, counts = torch.unique(labels[batch], return_counts=True)
        assert len(classes) == 2 and counts.tolist() == [4, 4]
    singleton = torch.nonzero(labels == 7).flatten()
    assert (labels[plan] == 7).any() and set(plan[labels[plan] == 7].tolist()) == set(singleton.tolist())


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 20), min_size=1, max_size=12),
    k=st.integers(2, 5),
    slots=st.integers(1, 15),
    steps=st.integers(1, 6),
    seed=st.integers(0, 2**31),
)
def test_pk_every_slot_is_k_samples_of_one_class(sizes: list[int], k: int, slots: int, steps: int, seed: int) -> None:
    labels = labels_of(sizes)
    plan = pk_batches(labels, slots * k, k, steps, generator(seed))
    assert plan.shape == (steps, slots * k)
    slot_labels = labels[plan].view(steps, slots, k)
    assert (slot_labels == slot_labels[:, :, :1]).all()
    for slot, slot_label in zip(plan.view(-1, k), slot_labels.view(-1, k)[:, 0], strict=True):
        class_size = int((labels == slot_label).sum())
        assert len(set(slot.tolist())) == min(k, class_size)  # no repeat unless the class is smaller than K
    n_classes = len(sizes)
    for batch in slot_labels[:, :, 0]:
        _, counts = torch.unique(batch, return_counts=True)
        assert len(counts) == min(slots, n_classes)
        assert counts.max() - counts.min() <= 1


def test_pk_is_seeded_and_checks_k() -> None:
    labels = labels_of([20] * 5)
    assert torch.equal(pk_batches(labels, 8, 4, 10, generator(3)), pk_batches(labels, 8, 4, 10, generator(3)))
    assert not torch.equal(pk_batches(labels, 8, 4, 10, generator(3)), pk_batches(labels, 8, 4, 10, generator(4)))
    with pytest.raises(ConfigError, match="multiple of samples_per_class"):
        pk_batches(labels, 10, 4, 3, generator())
    with pytest.raises(ConfigError, match="unknown sampler"):
        make_batches("nope", labels, 8, 4, 3, generator())
