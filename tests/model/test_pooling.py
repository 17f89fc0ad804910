"""mean_pool, the compression-token readout shared by training and inference (METHODS.md §4)."""

from __future__ import annotations

import pytest
import torch

from muco.model.pooling import mean_pool


def test_mean_pool_is_the_normalised_mean_over_the_marked_positions():
    hidden = torch.tensor(
        [
            [[3.0, 0.0], [1.0, 4.0], [100.0, 100.0]],
            [[0.0, 2.0], [0.0, 0.0], [0.0, 0.0]],
        ]
    )
    positions = torch.tensor([[True, True, False], [True, False, False]])
    # Row 0: mean of (3, 0) and (1, 4) = (2, 2), normalised (1, 1)/sqrt(2); position 2 ignored.
    expected = torch.tensor([[2**-0.5, 2**-0.5], [0.0, 1.0]])
    assert torch.allclose(mean_pool(hidden, positions), expected)


def test_a_row_without_positions_is_an_error():
    hidden = torch.ones(2, 3, 4)
    positions = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError, match="no position"):
        mean_pool(hidden, positions)
