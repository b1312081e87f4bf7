import pytest

from data_modules.datamodules import InstructionDataModule, VideoTextDataModule
from data_modules.sources import MultipleChoice
from lab.synthetic import generate


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "synthetic"
    generate(root, videos=30, seed=0)
    return root


def test_stage1_default_synthetic(synthetic):
    dm = VideoTextDataModule(
        root=str(synthetic),
        batch_size=2,
        num_workers=0,
        num_frames=4,
        train_sampling="uniform",
        ground_truth_boxes=True,
        max_bad_fraction=1.0,
    )
    dm.setup("fit")
    dm.configure_preprocess(32, (0.5,) * 3, (0.5,) * 3)
    b = next(iter(dm.train_dataloader()))
    assert b["video"].shape == (2, 4, 3, 32, 32) and b["boxes"].shape[:2] == (2, 4)
    tok = dm.collator().tok
    lab = b["labels"][0]
    assert tok.decode(lab[lab != -100]).startswith(b["target"][0])
    assert dm.skip_counts()["good"] >= 2 and set(dm.state_dict()) == {"skips"}


def _stage2_data(synthetic, **kw) -> InstructionDataModule:
    """Stage-2 data over the small synthetic set: its instructions, its train mc.csv as validation, 4 frames."""
    return InstructionDataModule(
        val=MultipleChoice(str(synthetic / "train" / "mc.csv")),
        root=str(synthetic),
        batch_size=2,
        num_workers=0,
        num_frames=4,
        train_sampling="uniform",
        **kw,
    )


def test_box_substeps_give_several_box_rows_per_frame(synthetic):
    # a random crop moves every box row with the frames
    dm = _stage2_data(synthetic, ground_truth_boxes=True, crop_scale=(0.5, 0.5))
    dm.setup("fit")
    dm.configure_preprocess(32, (0.5,) * 3, (0.5,) * 3)
    dm.configure_box_substeps(3)  # the fusion's, handed over by the stage module
    b = next(iter(dm.train_dataloader()))
    assert b["video"].shape[:2] == (2, 4) and b["boxes"].shape[:2] == (2, 12) and b["box_mask"].shape[:2] == (2, 12)
    assert b["box_mask"][:, ::3].any() and (b["boxes"][b["box_mask"]] <= 1).all()


def test_stage2_instructions_and_mc(synthetic):
    dm = _stage2_data(synthetic)
    dm.setup("fit")
    dm.configure_preprocess(32, (0.5,) * 3, (0.5,) * 3)
    b = next(iter(dm.train_dataloader()))
    assert b["video"].shape == (2, 4, 3, 32, 32) and "qformer_input_ids" in b
    v = next(iter(dm.val_dataloader()))
    assert len(v["options"][0]) >= 4 and v["target"][0] in "ABCDE" and v["question_type"][0]


def test_a_missing_root_names_the_folder_and_the_command(tmp_path):
    """Nothing in the data layer generates data: a left-out source under a missing root is one clear error."""
    dm = InstructionDataModule(root=str(tmp_path / "absent"), num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"absent.*`make data`"):
        dm.setup("fit")


def test_given_sources_and_tokenizer_read_nothing_under_root(synthetic, tmp_path):
    source = MultipleChoice(str(synthetic / "train" / "mc.csv"))
    dm = InstructionDataModule(
        train=source,
        val=source,
        test=source,
        root=str(tmp_path / "absent"),
        tokenizer=str(synthetic / "tokenizer"),
        num_workers=0,
    )
    dm.setup("fit")
    dm.setup("test")
    assert dm.predict_source is source and dm.collator() is not None


def test_stage1_refuses_a_split_it_does_not_load(synthetic):
    source = MultipleChoice(str(synthetic / "train" / "mc.csv"))
    with pytest.raises(ValueError, match="VideoTextDataModule loads the train / val splits only, not test"):
        VideoTextDataModule(test=source)


def test_both_stages_take_the_same_parameters():
    """One signature for both datamodules (declared once), so a YAML key means the same in either stage."""
    import inspect

    stage1, stage2 = inspect.signature(VideoTextDataModule), inspect.signature(InstructionDataModule)
    assert list(stage1.parameters) == list(stage2.parameters)
    assert {"root", "ground_truth_boxes", "shuffle_buffer", "box_attributes", "test"} <= set(stage1.parameters)
