"""Object tokens: RoIAlign tokens follow the boxed region; slot attention gives K slots per frame."""

import pytest
import torch

from vrp.models.contracts import TokenLayout
from vrp.models.objects import ObjectTokens, SlotAttention, interpolate_embeddings


def test_roi_tokens_read_the_boxed_region():
    torch.manual_seed(0)
    obj = ObjectTokens(TokenLayout(8, (4, 4), 1), roi_size=2, num_frames=2).eval()
    visual = torch.randn(1, 2, 17, 8)
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]).expand(1, 2, 2, 4)
    tokens, mask = obj(visual, boxes)
    assert tokens.shape == (1, 2, 2, 8) and mask.all()
    changed = visual.clone()
    changed[:, :, 1:].view(1, 2, 4, 4, 8)[:, :, 3, 3] += 5.0  # bottom-right patch only
    tokens2, _ = obj(changed, boxes)
    torch.testing.assert_close(tokens2[:, :, 0], tokens[:, :, 0])  # top-left box unaffected
    assert not torch.allclose(tokens2[:, :, 1], tokens[:, :, 1])
    changed_prefix = visual.clone()
    changed_prefix[:, :, 0] += 5.0  # CLS token is not part of the grid
    torch.testing.assert_close(obj(changed_prefix, boxes)[0], tokens)


def test_slots_per_frame_and_gradients():
    torch.manual_seed(0)
    obj = ObjectTokens(TokenLayout(8, (2, 2), 0), num_slots=3, slot_iters=2, num_frames=4)
    visual = torch.randn(2, 4, 4, 8, requires_grad=True)
    tokens, mask = obj(visual)
    assert tokens.shape == (2, 4, 3, 8) and mask.shape == (2, 4, 3) and mask.all()
    tokens.square().sum().backward()
    assert visual.grad.abs().sum() > 0 and obj.slots.slots.grad.abs().sum() > 0
    # frames are independent: changing frame 0 leaves frame 1's slots alone (time embedding aside)
    with torch.no_grad():
        other = visual.detach().clone()
        other[:, 0] += 1.0
        torch.testing.assert_close(obj(other)[0][:, 1], obj(visual.detach())[0][:, 1])


def test_slot_attention_is_deterministic_in_eval():
    s = SlotAttention(8, 2, iters=3).eval()
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(s(x), s(x))


def test_interpolate_embeddings():
    table = torch.arange(6.0).view(3, 2)
    assert interpolate_embeddings(table, 3) is table
    out = interpolate_embeddings(table, 5)
    torch.testing.assert_close(out[0], table[0])
    torch.testing.assert_close(out[-1], table[-1])
    torch.testing.assert_close(out[1], (table[0] + table[1]) / 2)


def test_bad_boxes_shape():
    obj = ObjectTokens(TokenLayout(8, (2, 2), 0))
    with pytest.raises(ValueError, match="boxes must be"):
        obj(torch.randn(1, 2, 4, 8), torch.rand(1, 3, 2, 4))
