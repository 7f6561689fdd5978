"""MemoryBank: a queue of embeddings written oldest first, with wrap-around, in its state dict."""

import pytest
import torch

from monai_cxrssl.networks import MemoryBank


def _sequential_enqueue(keys, ptr, batch):
    keys = keys.clone()
    for key in batch:
        keys[ptr] = key
        ptr = (ptr + 1) % keys.shape[0]
    return keys, ptr


def test_enqueue_equals_writing_one_by_one_whatever_the_batch():
    bank = MemoryBank(5, 3, normalize=False)
    assert torch.equal(bank.keys, torch.zeros(5, 3)) and int(bank.ptr) == 0
    expected, ptr = bank.keys.clone(), 0
    keys = torch.arange(1, 31, dtype=torch.float32).view(10, 3)
    for batch in (keys[:2], keys[2:4], keys[4:6], keys[6:8], keys[:7], keys[7:8]):  # 7 > size: the last 5 stay
        bank.enqueue(batch)
        expected, ptr = _sequential_enqueue(expected, ptr, batch)
        assert torch.equal(bank.keys, expected) and int(bank.ptr) == ptr
    # by hand: three batches of two into five rows; the third wrapped to rows 4 and 0
    bank = MemoryBank(5, 3, normalize=False)
    for i in range(3):
        bank.enqueue(keys[2 * i:2 * i + 2])
    assert bank.keys.tolist() == [keys[5].tolist(), *(keys[i].tolist() for i in range(1, 5))]
    assert int(bank.ptr) == 1


def test_starts_from_unit_vectors_and_resumes_from_its_state_dict():
    torch.manual_seed(0)
    bank = MemoryBank(6, 4)
    assert torch.allclose(bank.keys.norm(dim=1), torch.ones(6))
    bank.enqueue(torch.randn(4, 4))
    other = MemoryBank(6, 4)
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.keys, bank.keys) and int(other.ptr) == 4
    assert sorted(bank.state_dict()) == ["keys", "ptr"]


@pytest.mark.parametrize("args, match", [((0, 4), "size must be >= 1"), ((4, 0), "dimension must be >= 1")])
def test_bad_sizes_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        MemoryBank(*args)


def test_keys_of_another_dimension_are_refused():
    with pytest.raises(ValueError, match=r"expected keys \(N, 4\)"):
        MemoryBank(6, 4).enqueue(torch.randn(2, 3))
