import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import write_class_folders
from edgeskin.data import sets, splits


def test_layout_b_class_folders(class_folders):
    ds = sets.discover(class_folders)
    assert ds.counts()["train"] == {"benign": 12, "malignant": 12}
    assert not ds.val and not ds.test


def test_layout_a_split_folders(tmp_path):
    write_class_folders(tmp_path / "train", 5)
    write_class_folders(tmp_path / "test", 3, seed=9)
    ds = sets.discover(tmp_path)
    assert ds.counts()["train"] == {"benign": 5, "malignant": 5}
    assert ds.counts()["test"] == {"benign": 3, "malignant": 3}


def test_layout_c_manifest_with_groups(class_folders, tmp_path):
    rows = ["path,label,group"]
    for k, name in enumerate(("benign", "malignant")):
        for i, p in enumerate(sorted((class_folders / name).glob("*.jpg"))):
            rows.append(f"{p.relative_to(tmp_path)},{name},patient{k}_{i // 3}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    ds = sets.discover(manifest)
    assert len(ds.train) == 24 and ds.train[0].group == "patient0_0"
    split = splits.split_validation(ds, 0.25, seed=1)
    val_groups = {s.group for s in split.val}
    assert val_groups and not val_groups & {s.group for s in split.train}


def test_manifest_errors(tmp_path):
    (tmp_path / "m.csv").write_text("file_name,kind\nx.jpg,benign\n")
    with pytest.raises(sets.DataError, match="'path' and 'label'"):
        sets.discover(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("path,label\nx.jpg,mole\n")
    with pytest.raises(sets.DataError, match="mole"):
        sets.discover(tmp_path / "m.csv")


def test_missing_and_empty_class(tmp_path):
    write_class_folders(tmp_path / "s", 3)
    shutil.rmtree(tmp_path / "s" / "malignant")
    with pytest.raises(sets.DataError, match="malignant"):
        sets.discover(tmp_path / "s")
    (tmp_path / "s" / "malignant").mkdir()
    with pytest.raises(sets.DataError, match="no malignant images"):
        splits.split_validation(sets.discover(tmp_path / "s"), 0.2, seed=0)


def test_not_a_dataset(tmp_path):
    with pytest.raises(sets.DataError, match="no such"):
        sets.discover(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(sets.DataError):
        sets.discover(tmp_path / "x.txt")


def test_split_is_stratified_seeded_and_keeps_duplicates_together(tmp_path):
    root = write_class_folders(tmp_path / "s", 20)
    # Three re-encoded copies of one benign image.
    src = Image.open(root / "benign" / "benign_0.jpg")
    for q in (40, 60, 80):
        src.save(root / "benign" / f"copy_{q}.jpg", quality=q)
    ds = sets.discover(root)
    a = splits.split_validation(ds, 0.25, seed=3)
    b = splits.split_validation(ds, 0.25, seed=3)
    assert a.val == b.val
    counts = a.counts()["val"]
    assert 4 <= counts["benign"] <= 8 and 4 <= counts["malignant"] <= 7
    copies = {"benign_0.jpg", "copy_40.jpg", "copy_60.jpg", "copy_80.jpg"}
    in_val = {s.path.rsplit("/", 1)[-1] for s in a.val} & copies
    assert in_val in (set(), copies)
    in_clusters = int(a.notes[0].split("near-duplicates: ")[1].split()[0])
    assert in_clusters >= 4


def test_held_out_test_drops_copies_of_training_images(tmp_path):
    write_class_folders(tmp_path / "train", 6)
    write_class_folders(tmp_path / "test", 4, seed=5)
    shutil.copy(tmp_path / "train" / "malignant" / "malignant_2.jpg", tmp_path / "test" / "malignant" / "leak.jpg")
    kept, dropped = splits.held_out_test(sets.discover(tmp_path))
    # Synthetic lesions look alike, so other pairs may collide too; the copy must go.
    assert dropped >= 1 and len(kept) + dropped == 9
    assert all("leak" not in s.path for s in kept)


def test_load_images_lists_every_bad_file(class_folders):
    (class_folders / "benign" / "bad1.jpg").write_text("not an image")
    (class_folders / "malignant" / "bad2.jpg").write_bytes(b"")
    ds = sets.discover(class_folders)
    with pytest.raises(sets.DataError, match="2 unreadable"):
        sets.load_images(ds.train, 32)


def test_manifest_round_trip(class_folders, tmp_path):
    ds = splits.split_validation(sets.discover(class_folders), 0.25, seed=0)
    sets.write_manifest(tmp_path / "splits.csv", {"train": ds.train, "val": ds.val})
    back = sets.discover(tmp_path / "splits.csv")
    assert [s.label for s in back.train] == [s.label for s in ds.train]
    assert len(back.val) == len(ds.val)
    arr = sets.load_images(back.val, 32)
    assert arr.shape == (len(ds.val), 32, 32, 3) and arr.dtype == np.uint8


def test_test_images_sharing_a_group_with_training_are_left_out(tmp_path):
    write_class_folders(tmp_path / "imgs", 4, seed=11)
    rows = ["path,label,group,split"]
    for k, name in enumerate(("benign", "malignant")):
        for i, p in enumerate(sorted((tmp_path / "imgs" / name).glob("*.jpg"))):
            split = "test" if i >= 2 else "train"
            rows.append(f"{p},{name},{'patientA' if (k, i) in ((0, 0), (0, 3)) else ''},{split}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    kept, dropped = splits.held_out_test(sets.discover(tmp_path / "m.csv"))
    assert all(s.group != "patientA" for s in kept) and dropped >= 1
