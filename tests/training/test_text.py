"""The next-word model: stream layout, carried state, tied weights, pointer, export view."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.models.text import AllSteps, TextRNN, TextRNNConfig
from training.plans.text import _streams


def test_streams_continue_row_for_row_and_targets_shift_by_one() -> None:
    stream = np.arange(101, dtype=np.int64)
    x, y = _streams(stream, streams=4, window=5)
    # 4 streams of 25 tokens, 5 chunks of 5 each: batch k = rows 4k..4k+3.
    assert x.shape == y.shape == (20, 5)
    assert torch.equal(y, x + 1)
    for b in range(4):
        rows = x[b::4].reshape(-1)
        assert torch.equal(rows, torch.arange(25 * b, 25 * b + 25))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stateful_view_carries_state_between_batches_and_reset_forgets_it(cell: str) -> None:
    torch.manual_seed(0)
    # Without the pointer: its cache covers one chunk, so only the recurrence carries over.
    net = TextRNN(TextRNNConfig(cell, 30, hidden=(8, 6), dropout=0.0, pointer=False))
    view = AllSteps(net, stateful=True).eval()
    x = torch.randint(0, 30, (3, 10))
    with torch.no_grad():
        whole, _ = net.all_steps(x)
        first = view(x[:, :5])
        second = view(x[:, 5:])  # continues from the first half's state
        view.reset_state()
        fresh = view(x[:, 5:])
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    assert not torch.allclose(fresh, second)


@pytest.mark.parametrize("pointer", [False, True])
def test_forward_is_the_last_step_of_all_steps(pointer: bool) -> None:
    torch.manual_seed(0)
    net = TextRNN(TextRNNConfig("lstm", 40, hidden=(12,), pointer=pointer)).eval()
    x = torch.randint(0, 40, (5, 9))
    with torch.no_grad():
        steps, _ = net.all_steps(x)
        last = net(x)
    torch.testing.assert_close(last, steps[:, -1, :])
    torch.testing.assert_close(torch.softmax(last, -1).sum(-1), torch.ones(5))


def test_pointer_copies_the_word_that_followed_an_earlier_context() -> None:
    """With the sentinel switched off the pointer's mass lies only on words seen after a key."""
    torch.manual_seed(0)
    net = TextRNN(TextRNNConfig("gru", 20, hidden=(8,), pointer=True)).eval()
    assert net.pointer is not None
    with torch.no_grad():
        net.pointer.sentinel.bias.fill_(-1e4)
        x = torch.tensor([[3, 7, 3, 9, 5]])
        p = torch.softmax(net(x), -1)[0]
    assert float(p[[7, 3, 9, 5]].sum()) == pytest.approx(1.0, abs=1e-4)


def test_tied_output_shares_the_embedding_and_a_projection_bridges_other_widths() -> None:
    tied = TextRNN(TextRNNConfig("lstm", 50, hidden=(16,)))
    assert tied.out.weight is tied.embed.weight and tied.proj is None
    assert tied.embed.weight.shape == (50, 16)
    bridged = TextRNN(TextRNNConfig("lstm", 50, hidden=(16,), embed=8))
    assert bridged.out.weight is bridged.embed.weight and bridged.proj is not None
    assert bridged(torch.randint(0, 50, (2, 4))).shape == (2, 50)
    untied = TextRNN(TextRNNConfig("gru", 50, hidden=(16,), embed=8, tied=False))
    assert untied.out.weight is not untied.embed.weight and untied.proj is None
    assert untied(torch.randint(0, 50, (2, 4))).shape == (2, 50)
