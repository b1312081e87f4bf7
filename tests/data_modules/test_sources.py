import json

import pytest

from data_modules.skips import SkipCounter, TooManyBadSamples
from data_modules.sources import (
    BoxTable,
    CaptionManifest,
    LlavaInstructions,
    Mixture,
    MultipleChoice,
    VideoChat2Instructions,
)


def test_webvid_csv_maps_columns_and_reports_bad_rows(tmp_path, caplog):
    p = tmp_path / "results_2M_val.csv"
    p.write_text(
        "videoid,contentUrl,duration,page_dir,name\n"
        '1001,videos/a.mp4,PT10S,dir,"A dog runs, then jumps."\n'
        "1002,videos/b.mp4,PT5S,dir,\n"  # empty caption
        "1003,videos/c.mp4,PT5S\n"
    )  # too few fields
    skips = SkipCounter(max_bad_fraction=1.0)
    recs = CaptionManifest(str(p), video_column="contentUrl", caption_column="name", key_column="videoid").load(skips)
    assert [(r.key, r.video, r.turns[0][1]) for r in recs] == [
        ("1001", str(tmp_path / "videos/a.mp4"), "A dog runs, then jumps.")
    ]
    assert recs[0].qformer_text == "A dog runs, then jumps." and "<video>" in recs[0].turns[0][0]
    t = skips.totals()
    assert (t["skipped/empty_text"], t["skipped/malformed"]) == (1, 1)
    assert f"{p}:3" in caplog.text and f"{p}:4" in caplog.text  # line numbers


def test_generic_jsonl_manifest(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"video": "/abs/x.mp4", "caption": "hi"}\nnot json\n')
    skips = SkipCounter(max_bad_fraction=1.0)
    recs = CaptionManifest(str(p)).load(skips)
    assert [(r.key, r.video) for r in recs] == [("x", "/abs/x.mp4")]
    assert skips.totals()["skipped/malformed"] == 1


def test_llava_and_videochat2(tmp_path):
    llava = [
        {
            "id": "q1",
            "video": "v/a.mp4",
            "type": "temporal",
            "conversations": [
                {"from": "human", "value": "<video>\nWhat first?"},
                {"from": "gpt", "value": "red"},
                {"from": "human", "value": "Then?"},
                {"from": "gpt", "value": "blue"},
            ],
        },
        {"id": "q2", "video": "v/b.mp4", "conversations": [{"from": "gpt", "value": "x"}]},
    ]
    (tmp_path / "l.json").write_text(json.dumps(llava))
    skips = SkipCounter(max_bad_fraction=1.0)
    (rec,) = LlavaInstructions(str(tmp_path / "l.json")).load(skips)
    assert rec.turns == [("<video>\nWhat first?", "red"), ("Then?", "blue")] and rec.question_type == "temporal"
    assert rec.qformer_text == "What first?" and skips.totals()["skipped/malformed"] == 1
    vc2 = [{"video": "a.mp4", "QA": [{"i": "Watch carefully.", "q": "Who moves?", "a": "the dog"}]}]
    (tmp_path / "vc.jsonl").write_text("\n".join(json.dumps(x) for x in vc2))
    (rec,) = VideoChat2Instructions(str(tmp_path / "vc.jsonl"), video_root="/data").load(skips)
    assert rec.video == "/data/a.mp4" and rec.turns == [("Who moves?", "the dog")]
    assert rec.system == "Watch carefully."  # VideoChat2's loader: the instruction is the system message


def test_nextqa_multiple_choice_rendering(tmp_path):
    p = tmp_path / "val.csv"
    p.write_text(
        "video,question,answer,a0,a1,a2,a3,a4,qid,type\n"
        "4010069381,why did the boy fall,2,run,jump,slip,sit,,7,CW\n"
        "4010069382,what next,9,a,b,c,d,e,8,TN\n"
    )
    skips = SkipCounter(max_bad_fraction=1.0)
    mc = MultipleChoice(str(p), video_path="{video}.mp4", target="letter_text")
    (rec,) = mc.load(skips)
    assert rec.options == ["run", "jump", "slip", "sit"] and rec.answer_index == 2 and rec.question_type == "CW"
    assert rec.turns[0][1] == "(C) slip" and "(D) sit" in rec.turns[0][0] and "(E)" not in rec.turns[0][0]
    assert rec.video == str(tmp_path / "4010069381.mp4") and rec.video_key == "4010069381"
    assert skips.totals()["skipped/malformed"] == 1


def test_boxes_lookup_by_timestamp(tmp_path):
    p = tmp_path / "boxes.json"
    p.write_text(
        json.dumps(
            {"v": {"objects": ["a", "b"], "boxes": [[[0, 0, 0.5, 0.5], None], [[0.1, 0.1, 0.6, 0.6], [0, 0, 1, 1]]]}}
        )
    )
    import torch

    boxes, mask = BoxTable(str(p)).lookup("v", torch.tensor([0.0, 0.1]), fps=10)
    assert mask.tolist() == [[True, False], [True, True]] and boxes[1, 0].tolist() == pytest.approx(
        [0.1, 0.1, 0.6, 0.6]
    )
    # 2 rows per sampled frame: the frame, then halfway to the next (frames 0, 0, 1, 2: frame 2 is past the end)
    boxes, mask = BoxTable(str(p)).lookup("v", torch.tensor([0.0, 0.1]), fps=10, substeps=2)
    assert boxes.shape == (4, 2, 4) and mask[:, 0].tolist() == [True, True, True, False]
    p.write_text(json.dumps({"v": {"objects": ["a"]}, "w": {"objects": ["a"], "boxes": [[[0, 0, 1, 1]]]}}))
    table = BoxTable(str(p))  # a bad entry is refused, the rest load
    assert "w" in table and "v" not in table
    assert table.why_missing("v").startswith(f"entry 'v' of {p} was refused: malformed (KeyError: 'boxes')")


def test_substep_times():
    import torch

    from data_modules.sources.boxes import substep_times

    ts = torch.tensor([0.0, 0.4, 1.0])
    assert substep_times(ts, 1) is ts
    torch.testing.assert_close(substep_times(ts, 2), torch.tensor([0.0, 0.2, 0.4, 0.7, 1.0, 1.3]))
    torch.testing.assert_close(substep_times(ts[:1], 3), torch.zeros(3))  # one frame: nothing to space
    with pytest.raises(ValueError, match="substeps"):
        substep_times(ts, 0)


def test_mixture_weights(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("video,caption\n" + "".join(f"a{i}.mp4,x\n" for i in range(10)))
    b.write_text("video,caption\n" + "".join(f"b{i}.mp4,y\n" for i in range(2)))
    recs = Mixture([CaptionManifest(str(a)), CaptionManifest(str(b))], [1, 3], num_samples=40).load(SkipCounter())
    assert sum(r.key.startswith("a") for r in recs) == 10 and sum(r.key.startswith("b") for r in recs) == 30
    assert {r.key for r in recs if r.key.startswith("a")} == {f"a{i}" for i in range(10)}  # no repeats before exhausted


def test_max_bad_fraction_stops(tmp_path):
    skips = SkipCounter(max_bad_fraction=0.2, min_samples=5)
    for _ in range(4):
        skips.good()
    with pytest.raises(TooManyBadSamples, match="max_bad_fraction"):
        for i in range(3):
            skips.skip(f"k{i}", "decode_error", "boom")


def test_llava_items_with_options_are_multiple_choice(tmp_path):
    conv = [{"from": "human", "value": "<video>\nWhat color?"}, {"from": "gpt", "value": "red"}]
    items = [
        {"id": "ok", "video": "a.mp4", "options": ["blue", "red"], "answer_index": 1, "conversations": conv},
        {"id": "plain", "video": "a.mp4", "conversations": conv},
        {"id": "bad", "video": "a.mp4", "options": ["blue", "red"], "answer_index": 2, "conversations": conv},
    ]
    (tmp_path / "l.json").write_text(json.dumps(items))
    skips = SkipCounter(max_bad_fraction=1.0)
    ok, plain = LlavaInstructions(str(tmp_path / "l.json")).load(skips)
    assert (ok.options, ok.answer_index) == (["blue", "red"], 1)
    assert (plain.options, plain.answer_index) == (None, None)
    assert skips.totals()["skipped/malformed"] == 1


def test_multiple_choice_blank_middle_option_keeps_the_label(tmp_path):
    p = tmp_path / "mc.csv"
    p.write_text(
        "video,question,answer,a0,a1,a2,a3,a4,qid,type\n"
        "v1,which colour,2,red,,green,blue,,1,D\n"  # a blank between options: answer 2 is still green
        "v2,which colour,1,red,,green,,,2,D\n"  # the answer points at the blank option
        "v3,which colour,0,red,,,,,3,D\n"
    )  # one option left
    skips = SkipCounter(max_bad_fraction=1.0)
    (rec,) = MultipleChoice(str(p), video_path="{video}.mp4", target="text").load(skips)
    assert rec.options == ["red", "green", "blue"] and rec.answer_index == 1 and rec.turns[0][1] == "green"
    assert rec.options[rec.answer_index] == "green"
    assert skips.totals()["skipped/malformed"] == 2


def test_bad_row_budget_is_a_fraction_of_the_rows_read(tmp_path):
    p = tmp_path / "mc.csv"
    rows = [f"v{i},q{i},{9 if i % 600 == 0 else 0},a,b,,,," for i in range(12011)]  # 21 rows answer option 9
    p.write_text("video,question,answer,a0,a1,a2,a3,a4,qid\n" + "\n".join(rows) + "\n")
    skips = SkipCounter(max_bad_fraction=0.05)
    records = skips.load(MultipleChoice(str(p)), "mc.csv")
    assert len(records) == 12011 - 21 and skips.totals()["skipped/malformed"] == 21 and skips.totals()["rows"] == 12011
    p.write_text(
        "video,question,answer,a0,a1,a2,a3,a4,qid\n"
        + "\n".join(f"v{i},q{i},{9 if i % 3 == 0 else 0},a,b,,,," for i in range(300))
        + "\n"
    )  # a third bad
    with pytest.raises(TooManyBadSamples, match=r"^100 of 300 rows read from bad\.csv were bad \(> max_bad_fraction"):
        SkipCounter(max_bad_fraction=0.05).load(MultipleChoice(str(p)), "bad.csv")


def test_bad_sample_budget_waits_for_the_minimum_count():
    skips = SkipCounter(max_bad_fraction=0.05, min_samples=100)
    for i in range(20):  # 20 bad first: below the minimum count, no verdict yet
        skips.skip(f"k{i}", "decode_error")
    for _ in range(380):
        skips.good()
    skips.check("samples")  # 20 of 400 = 5%: within budget
    with pytest.raises(TooManyBadSamples, match="21 of 401 samples read were bad"):
        skips.skip("k20", "decode_error")


def test_box_rows_between_frames_are_interpolated(tmp_path):
    """Rows between two frames move with the object instead of repeating a frame and jumping; where the object is
    missing in one of the two frames, the nearer frame's box (or none) is used."""
    import torch

    from data_modules.sources.boxes import BoxTable, interpolate_frames, rows_at

    nan = float("nan")
    tracks = torch.tensor([[[0.0, 0.0, 0.2, 0.2]], [[0.2, 0.0, 0.4, 0.2]], [[nan, nan, nan, nan]]])  # (F=3, K=1, 4)
    rows = interpolate_frames(tracks, torch.tensor([0.0, 0.25, 1.0, 1.4, 1.6, 2.0]))
    torch.testing.assert_close(rows[:2, 0], torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.05, 0.0, 0.25, 0.2]]))
    torch.testing.assert_close(rows[2:4, 0], tracks[1, 0].expand(2, 4))  # frame 2 absent: frame 1's box, the nearer
    assert rows[4:].isnan().all()  # nearer to the absent frame
    boxes, mask = rows_at(tracks, torch.tensor([0.0, 0.1, 0.2]), torch.tensor([0.05, 0.1]))
    torch.testing.assert_close(boxes[0, 0], torch.tensor([0.1, 0.0, 0.3, 0.2]))
    assert mask.tolist() == [[True], [True]]
    p = tmp_path / "boxes.json"
    p.write_text(json.dumps({"v": {"objects": ["a"], "boxes": [[[0.0, 0.0, 0.2, 0.2]], [[0.2, 0.0, 0.4, 0.2]]]}}))
    boxes, mask = BoxTable(str(p)).lookup("v", torch.tensor([0.0, 0.1]), fps=10, substeps=2)  # frames 0, .5, 1, 1.5
    assert mask[:, 0].tolist() == [True, True, True, False]  # the row past the last frame is masked
    torch.testing.assert_close(boxes[:3, 0, 0], torch.tensor([0.0, 0.1, 0.2]))  # halfway between frames 0 and 1
