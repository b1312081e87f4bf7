"""The object stage's detectors: CenterNet shapes, targets, loss, a tiny overfit, save / load by path; a torchvision
detection model loaded from a local weights file (tiny, random, saved to a temp folder: no download)."""

from __future__ import annotations

import pytest
import torch

from vrp.models.detection import CenterDetector, CenterNet, Detections, ObjectDetector, TorchvisionDetector


def scene(boxes: list[list[float]], size: int = 64) -> torch.Tensor:
    """(3, size, size) in [0, 1]: a dark frame with a bright square per box (xyxy in [0, 1])."""
    frame = torch.full((3, size, size), 0.15)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        frame[:, int(y1 * size) : int(y2 * size), int(x1 * size) : int(x2 * size)] = torch.tensor(
            [[0.9], [0.3 + 0.3 * i], [0.2]]
        )[:, :, None]
    return frame


def test_centernet_shapes_and_targets():
    net = CenterNet(image_size=64, width=8, dilations=(1, 2))
    heat, size, offset = net(torch.rand(3, 3, 48, 80))  # resized to 64 x 64, stride 4
    assert heat.shape == (3, 1, 16, 16) and size.shape == (3, 2, 16, 16) and offset.shape == (3, 2, 16, 16)
    boxes = [torch.tensor([[0.25, 0.25, 0.5, 0.75]]), torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 0.2, 0.2]] * 2)]
    heat, index, frame, reg = net.targets(boxes)
    assert heat[0, 0].flatten().argmax() == index[0] == 8 * 16 + 6  # centre (6.0, 8.0) in cells -> cell (y=8, x=6)
    assert heat[1].sum() == 0 and frame.tolist() == [0, 2, 2]
    assert reg[0].tolist() == pytest.approx([4.0, 8.0, 0.0, 0.0])  # width, height in cells, sub-cell offset


def test_centernet_loss_has_gradients_and_an_overfit_finds_the_box():
    torch.manual_seed(0)
    truth = [[0.2, 0.3, 0.45, 0.55], [0.6, 0.1, 0.85, 0.4]]
    frames = torch.stack([scene(truth), scene(truth[:1])])
    labels = [torch.tensor(truth), torch.tensor(truth[:1])]
    net = CenterNet(image_size=64, width=16, dilations=(1, 2, 1), score_threshold=0.3)
    loss = net.loss(frames, labels)
    loss.backward()
    assert loss.isfinite() and all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        net.loss(frames, labels).backward()
        opt.step()
    net.eval()
    found = net.detect(frames)
    assert [len(d.boxes) for d in found] == [2, 1]
    from torchvision.ops import box_iou

    assert box_iou(found[0].boxes, labels[0]).amax(0).min() > 0.6


def test_center_detector_saves_and_loads_by_path(tmp_path):
    net = CenterNet(image_size=32, width=8, dilations=(1,), score_threshold=0.0, max_detections=3).eval()
    net.save_pretrained(tmp_path / "detector")
    loaded = CenterDetector(str(tmp_path / "detector"))
    assert isinstance(loaded, ObjectDetector)
    frames = torch.rand(2, 3, 32, 32)
    for a, b in zip(net.detect(frames), loaded.detect(frames)):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores) and len(a.boxes) == 3
    assert len(CenterDetector(str(tmp_path / "detector"), score_threshold=1.1).detect(frames)[0].boxes) == 0
    with pytest.raises(FileNotFoundError, match="lab prepare --detector-steps"):
        CenterDetector(str(tmp_path / "none"))


def test_torchvision_detector_from_a_local_weights_file(tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(
        "ssdlite320_mobilenet_v3_large", weights=None, weights_backbone=None, num_classes=3
    )
    torch.save(model.state_dict(), tmp_path / "ssd.pt")
    det = TorchvisionDetector(
        "ssdlite320_mobilenet_v3_large", str(tmp_path / "ssd.pt"), num_classes=3, score_threshold=0.0, max_detections=5
    )
    assert isinstance(det, ObjectDetector)
    out = det.detect(torch.rand(2, 3, 60, 90))
    assert len(out) == 2 and all(isinstance(d, Detections) for d in out)
    for d in out:
        assert d.boxes.shape[1:] == (4,) and len(d.boxes) <= 5 and len(d.scores) == len(d.boxes)
        assert d.boxes.min() >= 0 and d.boxes.max() <= 1  # normalised by the frame's width and height
        assert torch.all(d.scores[:-1] >= d.scores[1:])
    only = TorchvisionDetector(
        "ssdlite320_mobilenet_v3_large", str(tmp_path / "ssd.pt"), num_classes=3, score_threshold=0.0, labels=[]
    )
    assert all(len(d.boxes) == 0 for d in only.detect(torch.rand(1, 3, 60, 90)))
    with pytest.raises(FileNotFoundError, match="state_dict"):
        TorchvisionDetector("ssdlite320_mobilenet_v3_large", str(tmp_path / "missing.pt"))
