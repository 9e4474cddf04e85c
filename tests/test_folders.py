"""Image folders at scale: a listing that reads no pixels, saved once and reused while the
folder is unchanged, shared by processes and worker processes; undecodable files found
and skipped while reading, deterministically, and a limit on how many."""

import os
import pickle
import subprocess
import sys
import time

import grain
import numpy as np
import processes
import pytest
import simplejpeg
from PIL import Image, ImageFile

from train import settings
from train.configs import default
from train.input_pipeline import batching, datasets, folders, undecodable


def _jpeg_bytes(rng, size=(20, 16)):
    import io

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _folder(root, per_class=10, classes=("ant", "bee", "cow"), broken=()):
    """ROOT/{train,test}/CLASS/NN.jpg of 20x16 JPEGs; ``broken``: (split, class, i) whose
    pixel data is cut off after a valid header."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 3)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                data = _jpeg_bytes(rng)
                if (split, c, i) in broken:
                    data = data[: data.index(b"\xff\xda") + 12]
                (root / split / c / f"{i:02d}.jpg").write_bytes(data)
    return root


def _age(root, seconds=60):
    """Every directory's modification time moved into the past: the listing then trusts it."""
    past = time.time() - seconds
    for here, _, _ in os.walk(root):
        os.utime(here, (past, past))


def _config(root, **overrides):
    config = default.get_config()
    config.update(dataset="image_folder", data_dir=str(root), batch_size=6, **overrides)
    return config


def test_creating_the_source_reads_no_pixels_and_bad_files_are_found_when_read(tmp_path, monkeypatch):
    root = _folder(tmp_path / "f", broken={("train", "bee", 3), ("test", "cow", 1)})
    decoded = []
    real_load, real_simplejpeg = ImageFile.ImageFile.load, simplejpeg.decode_jpeg
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or real_load(self))
    monkeypatch.setattr(
        simplejpeg, "decode_jpeg", lambda *a, **k: decoded.append(1) or real_simplejpeg(*a, **k)
    )
    for image_size in (0, 16):  # 0: the size comes from the headers
        config = settings.data(_config(root, image_size=image_size))
        data = batching.create_data(config, str(tmp_path / "l"))
        assert decoded == [], "creating the data source decoded an image"
        assert data.num_train == 30 and data.num_eval == 9
        # Every header says 20x16, the broken files' too; with an image_size, none is read.
        assert data.image_shape == ((20, 16, 3) if image_size == 0 else (16, 16, 3))
    # The broken files decode only when read: training stands the next file in (the same
    # one every time), evaluation leaves them out.
    train = data.source.splits["train"]
    stream = data.train_iterator()
    batches = [next(stream) for _ in range(5)]  # one epoch
    assert decoded, "reading decoded nothing"
    skipped = {train.path(i) for b in batches for i in b["skipped"].tolist() if i >= 0}
    assert skipped == {str(root / "train" / "bee" / "03.jpg")}
    assert sum(b["mask"].sum() for b in data.eval_batches()) == 8
    assert data.undecodable.summary() == {"test": [str(root / "test" / "cow" / "01.jpg")]}


def test_a_bad_file_is_replaced_by_the_next_decodable_one_of_its_split(tmp_path):
    root = _folder(tmp_path / "f", per_class=4, broken={("train", "ant", 3), ("train", "bee", 0)})
    source = datasets.image_folder_source(str(root), need_shape=False)
    ds = undecodable.DecodeOrSkip(grain.MapDataset.source(source.splits["train"]), 3, 0, substitute=True)
    good = undecodable.DecodeOrSkip(grain.MapDataset.source(source.splits["train"]), 3, 0, substitute=False)
    # ant/03 (index 3) and bee/00 (index 4) are both bad: 3 -> 5 (bee/01, label 1), 4 -> 5.
    for bad in (3, 4):
        record = ds[bad]
        assert record["skipped"] == bad and record["label"] == 1
        np.testing.assert_array_equal(record["image"], good[5]["image"])
    assert good[3]["image"] is None and good[3]["skipped"] == 3
    assert ds[11]["skipped"] == -1
    # At the end of the split it wraps to the start.
    source = datasets.image_folder_source(
        str(_folder(tmp_path / "g", per_class=2, broken={("train", "cow", 1)}))
    )
    ds = undecodable.DecodeOrSkip(grain.MapDataset.source(source.splits["train"]), 3, 0, substitute=True)
    assert ds[5]["skipped"] == 5 and ds[5]["label"] == 0
    # A folder of nothing but bad files is refused, not searched without end.
    for f in (tmp_path / "g" / "train").rglob("*.jpg"):
        f.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="images in a row do not decode"):
        ds[0]


def test_more_bad_files_than_the_limit_stop_with_one_line_naming_the_folder_and_some(tmp_path):
    root = _folder(tmp_path / "f", per_class=10, broken={("train", "ant", i) for i in range(4)})
    data = batching.create_data(settings.data(_config(root, image_size=16, undecodable_limit=0.1)))
    stream = data.train_iterator()
    for _ in range(5):
        data.undecodable.add("train", next(stream)["skipped"])
    with pytest.raises(ValueError) as info:
        data.undecodable.check()  # 4 of 30 > 10%
    message = str(info.value)
    assert "\n" not in message and f"in image_folder:{root}" in message
    assert "4 of the 30 images of split 'train'" in message and "config.undecodable_limit=0.1" in message
    assert f"{root / 'train' / 'ant' / '00.jpg'}, {root / 'train' / 'ant' / '01.jpg'}" in message
    data = batching.create_data(settings.data(_config(root, image_size=16, undecodable_limit=0.2)))
    stream = data.train_iterator()
    for _ in range(5):
        data.undecodable.add("train", next(stream)["skipped"])
    data.undecodable.check()  # 4 of 30 <= 20%
    with pytest.raises(ValueError, match=r"undecodable_limit=1.0 must be in \[0, 1\)"):
        settings.data(_config(root, undecodable_limit=1.0))


def test_the_listing_is_saved_reused_while_the_folder_is_unchanged_and_redone_after(tmp_path, monkeypatch):
    root = _folder(tmp_path / "f")
    listing_dir = str(tmp_path / "run" / "listing")
    _age(root)
    first = datasets.image_folder_source(str(root), listing_dir=listing_dir, need_shape=False)
    assert os.path.isfile(os.path.join(listing_dir, "listing.json"))
    fingerprint = first.splits["train"].fingerprint(0, None)
    scans = []
    real = folders.FolderListing.scan
    monkeypatch.setattr(folders.FolderListing, "scan", staticmethod(lambda r: scans.append(r) or real(r)))
    again = datasets.image_folder_source(str(root), listing_dir=listing_dir, need_shape=False)
    assert scans == [] and again.splits["train"].fingerprint(0, None) == fingerprint
    assert [again.splits["train"].path(i) for i in range(30)] == [
        first.splits["train"].path(i) for i in range(30)
    ]
    # Reused by a grain worker (unpickled in another process) without a copy of the names:
    # the pickle names the saved files.
    source = again.splits["train"]
    assert len(pickle.dumps(source)) < 2000
    assert pickle.loads(pickle.dumps(source)).path(7) == source.path(7)
    # The fingerprint of the listing arrays is the one of "label\tCLASS/NAME" lines, as
    # before listings were arrays: runs saved then resume.
    lines = [f"{y}\t{os.path.join(*source.path(i).split(os.sep)[-2:])}" for i, y in enumerate(source.labels)]
    import hashlib

    assert fingerprint == hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    # A file added (or removed, or renamed) changes its folder's time: listed again.
    (root / "train" / "bee" / "new.jpg").write_bytes((root / "train" / "bee" / "00.jpg").read_bytes())
    changed = datasets.image_folder_source(str(root), listing_dir=listing_dir, need_shape=False)
    assert len(scans) == 1 and len(changed.splits["train"]) == 31
    assert changed.splits["train"].fingerprint(0, None) != fingerprint
    # Just changed folders (times within 2 s) are never trusted, on file systems with
    # coarse times; aged, the new listing is reused.
    datasets.image_folder_source(str(root), listing_dir=listing_dir, need_shape=False)
    assert len(scans) == 2
    _age(root)
    datasets.image_folder_source(str(root), listing_dir=listing_dir, need_shape=False)
    datasets.image_folder_source(str(root), listing_dir=listing_dir, need_shape=False)
    assert len(scans) == 3
    # A subset of classes reads the same listing.
    subset = datasets.image_folder_source(
        str(root), classes=(2, 0), listing_dir=listing_dir, need_shape=False
    )
    assert len(scans) == 3 and subset.class_names == ["cow", "ant"]
    assert sorted(set(subset.splits["train"].labels.tolist())) == [0, 1]
    assert subset.splits["train"].path(0).endswith("ant/00.jpg") and subset.splits["train"].labels[0] == 1


TWO_PROCESSES = """
import sys
import jax
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from train.input_pipeline import datasets, folders
scans = []
real = folders.FolderListing.scan
folders.FolderListing.scan = staticmethod(lambda root: scans.append(root) or real(root))
source = datasets.image_folder_source(sys.argv[3], listing_dir=sys.argv[4], need_shape=True)
print("process", jax.process_index(), "scanned", len(scans), "train", len(source.splits["train"]),
      "shape", source.image_shape, flush=True)
# Each process meets its own undecodable files; after a sync every process knows all.
import numpy as np
from train.input_pipeline import undecodable
found = undecodable.Undecodable(source.splits, 0.5, "here")
found.add("train", np.array([-1, 5 * jax.process_index() + 1, -1]))
found.sync()
print("process", jax.process_index(), "found", sorted(found.found["train"]), flush=True)
"""


def test_process_0_lists_and_the_others_read_its_listing(tmp_path):
    root = _folder(tmp_path / "f")
    address = f"127.0.0.1:{processes.free_port()}"
    env = {**os.environ, "XLA_FLAGS": processes.xla_flags(), "PYTHONPATH": str(processes.REPO)}
    cmds = [
        [sys.executable, "-c", TWO_PROCESSES, address, str(i), str(root), str(tmp_path / "listing")]
        for i in range(2)
    ]
    procs = [
        subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in cmds
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert "process 0 scanned 1 train 30 shape (20, 16, 3)" in outs[0], outs[0][-2000:]
    assert "process 1 scanned 0 train 30 shape (20, 16, 3)" in outs[1], outs[1][-2000:]
    assert all(f"process {i} found [1, 6]" in outs[i] for i in range(2)), outs
