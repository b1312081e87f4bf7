import pytest
import torch

from vrp.models.connectors import LinearConnector, MLPConnector, PerceiverResampler, PoolingConnector, PoolOptions
from vrp.models.contracts import FusionInput, TokenLayout

D, GRID, PREFIX = 32, (4, 4), 1
N = PREFIX + GRID[0] * GRID[1]
LAYOUT = TokenLayout(D, GRID, PREFIX)


def _connectors():
    return [
        PoolingConnector(LAYOUT, pool=PoolOptions(temporal_bins=2, spatial_size=(2, 2))),
        LinearConnector(LAYOUT, pool=PoolOptions(temporal_bins=2, spatial_size=(2, 2)), output_dim=24),
        MLPConnector(LAYOUT, pool=PoolOptions(temporal_bins=2, spatial_size=(1, 1)), hidden_dim=48, output_dim=24),
        PerceiverResampler(LAYOUT, num_latents=6, depth=1, num_heads=4, output_dim=24),
    ]


@pytest.mark.parametrize("conn", _connectors(), ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("frames", [3, 5])
def test_shapes_do_not_depend_on_frame_count(conn, frames):
    visual = torch.randn(2, frames, N, D)
    mask = torch.ones(2, frames, dtype=torch.bool)
    mask[1, -1] = False
    out = conn(FusionInput(visual, mask))
    assert out.shape == (2, conn.num_output_tokens, conn.output_dim)
    assert conn.supports_text is False and conn.hidden_size == conn.output_dim


@pytest.mark.parametrize("conn", _connectors(), ids=lambda c: type(c).__name__)
def test_padding_frames_are_ignored(conn):
    visual = torch.randn(1, 4, N, D)
    mask = torch.tensor([[True, True, True, False]])
    changed = visual.clone()
    changed[:, 3] = 100.0
    torch.testing.assert_close(conn(FusionInput(visual, mask)), conn(FusionInput(changed, mask)))


def test_pooling_averages_real_frames_into_ordered_bins():
    conn = PoolingConnector(LAYOUT, pool=PoolOptions(temporal_bins=2, spatial_size=(1, 1)))
    visual = torch.randn(1, 5, N, D)
    out = conn(FusionInput(visual, torch.tensor([[True] * 4 + [False]])))
    torch.testing.assert_close(out[0, 0], visual[0, :2, PREFIX:].mean((0, 1)))
    torch.testing.assert_close(out[0, 1], visual[0, 2:4, PREFIX:].mean((0, 1)))
    temporal = PoolingConnector(LAYOUT, pool=PoolOptions(temporal_bins=1, spatial_size=GRID))  # temporal pooling only
    assert temporal(FusionInput(visual)).shape == (1, 16, D)


def test_token_count_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="grid"):
        PoolingConnector(LAYOUT)(FusionInput(torch.randn(1, 2, N + 1, D)))


@pytest.mark.parametrize("conn", _connectors()[1:], ids=lambda c: type(c).__name__)
def test_every_parameter_gets_a_gradient(conn):
    conn(FusionInput(torch.randn(2, 3, N, D))).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conn.parameters())


def test_perceiver_rejects_too_many_frames():
    conn = PerceiverResampler(LAYOUT, num_heads=4, max_frames=2)
    with pytest.raises(ValueError, match="max_frames"):
        conn(FusionInput(torch.randn(1, 3, N, D)))
