"""The annotation store: saving, finding, reopening, damaged entries, nnU-Net export/import."""
import json
from pathlib import Path

import numpy as np
import pytest

from napari_medseg.errors import MedsegError
from napari_medseg.io import read_image
from napari_medseg.training.datasets import cases_from_store, nnunet_cases
from napari_medseg.training.store import AnnotationStore, image_hash, write_image_copy


def _on_disk(make_volume, tmp_path, seed=0, name="scan.nii.gz"):
    image, labels = make_volume(seed=seed)
    path = write_image_copy(image, tmp_path / name)
    return read_image(path), labels


def test_save_find_restore_and_revisions(tmp_path, make_volume):
    image, labels = _on_disk(make_volume, tmp_path)
    store = AnnotationStore(tmp_path / "project")
    entry = store.save(image, labels, classes={1: "liver", 2: "spleen"},
                       prompts=[{"kind": "box", "box": [4, 5, 12, 10], "z": 2, "label": 1}])
    assert entry.image["sha256"] == image_hash(image) and entry.image["copy"] is None
    np.testing.assert_allclose(entry.image["geometry"]["spacing"], [0.8, 0.9, 2.5], rtol=1e-6)
    assert entry.reviewed == {"all": False, "slices": [1, 2, 3, 4]}  # slices holding labels
    assert entry.classes == {0: "background", 1: "liver", 2: "spleen"}

    reopened = AnnotationStore(tmp_path / "project", create=False)
    np.testing.assert_array_equal(reopened.restore(image), labels)
    assert reopened.classes[1] == "liver"

    edited = labels.copy()
    edited[0, 0, 0] = 1
    second = reopened.save(image, edited, reviewed={"all": False, "slices": [0, 5]}, report="liver lesion, 2 cm")
    assert second.id == entry.id and second.revision == 2
    assert sorted(p.name for p in second.folder.glob("labels-*")) == ["labels-2.nii.gz", "labels-2.nii.gz.json"]
    assert second.reviewed["slices"] == [0, 1, 2, 3, 4, 5]
    assert len(second.prompts) == 1 and second.report == "liver lesion, 2 cm"
    np.testing.assert_array_equal(reopened.restore(image), edited)
    assert reopened.summary()["reviewed_slices"] == 6


def test_object_classes_and_colours_are_kept_with_the_entry_and_its_labels(tmp_path, make_volume):
    image, labels = _on_disk(make_volume, tmp_path)
    store = AnnotationStore(tmp_path / "project")
    store.save(image, labels, classes={1: "liver", 2: "spleen"}, label_classes={1: "organ", 2: ""},
               label_colors={1: (0.0, 1.0, 0.0, 1.0), 2: (200, 30, 40)})
    (entry,) = AnnotationStore(tmp_path / "project", create=False).entries()
    assert entry.label_classes == {1: "organ"} and entry.label_colors == {1: (0, 255, 0), 2: (200, 30, 40)}
    written = read_image(entry.labels_path).metadata
    assert written["label_classes"] == {1: "organ"} and written["label_colors"] == entry.label_colors
    edited = labels.copy()
    edited[0, 0, 0] = 1
    again = store.save(image, edited)  # not given: kept
    assert again.label_classes == {1: "organ"} and again.label_colors == entry.label_colors


def test_image_without_file_is_copied_into_the_store(tmp_path, make_volume):
    image, labels = make_volume()
    store = AnnotationStore(tmp_path / "project")
    entry = store.save(image, labels)
    assert entry.image["copy"] == "image.mha"
    loaded, loaded_labels = store.load(store.entries()[0])
    np.testing.assert_array_equal(loaded.array, image.array)
    assert loaded.spacing == image.spacing
    np.testing.assert_array_equal(loaded_labels, labels)


def test_damaged_entries_are_reported_and_skipped(tmp_path, make_volume):
    store = AnnotationStore(tmp_path / "project")
    good = store.save(*_on_disk(make_volume, tmp_path, 0, "a.nii.gz"))
    tampered = store.save(*_on_disk(make_volume, tmp_path, 1, "b.nii.gz"))
    broken = store.save(*_on_disk(make_volume, tmp_path, 2, "c.nii.gz"))
    changed = store.save(*_on_disk(make_volume, tmp_path, 3, "d.nii.gz"))
    with open(tampered.labels_path, "r+b") as stream:  # flip bytes inside the labels file
        stream.seek(60)
        stream.write(b"\xff\xff\xff")
    (broken.folder / "entry.json").write_text("{not json")
    other, _ = make_volume(seed=9)
    write_image_copy(other, tmp_path / "d.nii.gz")  # the image file changed after labelling

    with pytest.warns(UserWarning, match="skipping entry"):
        entries = store.entries()
    assert [e.id for e in entries] == sorted([good.id, changed.id])
    assert any("sha256" in p and tampered.id in p for p in store.problems)
    assert any("damaged" in p and broken.id in p for p in store.problems)

    with pytest.warns(UserWarning):
        cases = cases_from_store(store)
    assert [c.name for c in cases] == [good.id]
    assert any("changed since it was labelled" in p for p in store.problems)


def test_project_folder_rules(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(MedsegError, match="not empty"):
        AnnotationStore(tmp_path / "busy")
    with pytest.raises(MedsegError, match="no project.json"):
        AnnotationStore(tmp_path / "missing", create=False)


def test_nnunet_export_marks_unreviewed_slices_ignore_and_imports_back(tmp_path, make_volume):
    image, labels = _on_disk(make_volume, tmp_path)
    store = AnnotationStore(tmp_path / "project")
    store.save(image, labels, classes={1: "liver", 2: "spleen"}, reviewed={"all": False, "slices": [0, 1, 2, 3, 4]},
               report="two organs")
    flat, flat_labels = make_volume((1, 12, 14), seed=4)
    store.save(flat.with_array(flat.array[0], spacing=(0.5, 0.5), origin=(0.0, 0.0), direction=np.eye(2)),
               flat_labels[0])
    target = store.export_nnunet(tmp_path / "Dataset001_Test")
    description = json.loads((target / "dataset.json").read_text())
    assert description["labels"] == {"background": 0, "liver": 1, "spleen": 2, "ignore": 3}
    assert description["numTraining"] == 2 and description["channel_names"] == {"0": "MR"}
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == ["case_0000_0000.nii.gz", "case_0001_0000.nii.gz"]
    (report,) = (target / "reports").iterdir()
    assert report.read_text() == "two organs"

    (volume_case,) = [c for c in nnunet_cases(target) if c.ndim == 3]
    assert report.name == f"{volume_case.name}.txt"
    assert volume_case.reviewed == {"all": False, "slices": [0, 1, 2, 3, 4]}
    np.testing.assert_array_equal(volume_case.labels[:5], labels[:5])
    assert not volume_case.labels[5].any()  # the ignored slice is not a labelled one
    assert volume_case.report == "two organs" and volume_case.classes[2] == "spleen"

    imported = AnnotationStore.import_nnunet(target, tmp_path / "imported")
    assert len(imported.entries()) == 2
    entry = next(e for e in imported.entries() if e.ndim == 3)
    assert entry.reviewed["slices"] == [0, 1, 2, 3, 4] and entry.report == "two organs"


# ---- issue 18 -------------------------------------------------------------------------------------

def _record(entry):
    return json.loads((entry.folder / "entry.json").read_text())


@pytest.mark.parametrize("absolute", [True, False])
def test_paths_in_entry_json_never_lead_outside_the_entry(tmp_path, make_volume, absolute):
    image, labels = _on_disk(make_volume, tmp_path)
    store = AnnotationStore(tmp_path / "project")
    entry = store.save(image, labels)
    victim = tmp_path / "victim.nii.gz"
    victim.write_bytes(entry.labels_path.read_bytes())  # same hash as the recorded one
    (tmp_path / "victim.json").write_text("{}")
    record = _record(entry)
    record["labels_file"] = str(victim) if absolute else "../../../victim.nii.gz"
    (entry.folder / "entry.json").write_text(json.dumps(record))

    with pytest.warns(UserWarning, match="outside its folder|not a file of its folder"):
        assert store.entries() == []
    with pytest.warns(UserWarning), pytest.raises(MedsegError, match="cannot be updated"):
        store.save(image, labels)
    assert victim.is_file() and (tmp_path / "victim.json").is_file()
    assert _record(entry)["labels_file"] == record["labels_file"]  # the damaged record is left for the user


def test_image_copy_outside_the_entry_is_refused(tmp_path, make_volume):
    image, labels = make_volume()
    store = AnnotationStore(tmp_path / "project")
    entry = store.save(image, labels)
    outside = write_image_copy(image, tmp_path / "outside.mha")
    for name in (str(outside), "../../../outside.mha"):
        record = _record(entry)
        record["image"]["copy"] = name
        (entry.folder / "entry.json").write_text(json.dumps(record))
        with pytest.warns(UserWarning, match="outside its folder|not a file of its folder"):
            assert store.entries() == []
        entry.image["copy"] = name
        with pytest.raises(MedsegError, match="folder"):
            store.read_image(entry)


def _malform(folder, kind):
    record = folder / "entry.json"
    content = json.loads(record.read_text())
    if kind == "directory":
        record.unlink()
        record.mkdir()
    elif kind == "unreadable":
        record.chmod(0)
    elif kind == "invalid json":
        record.write_bytes(b"\xff{not json")
    else:
        key, value = kind
        content[key] = value
        record.write_text(json.dumps(content).replace('"__inf__"', "1e999"))


MALFORMED = ["directory", "unreadable", "invalid json", ("classes", []), ("revision", "__inf__"),
             ("prompts", {"a": 1}), ("image", None), ("reviewed", {"slices": ["x"]}),
             ("label_colors", {"1": "red"}), ("label_classes", {"x": "organ"})]


@pytest.mark.parametrize("kind", MALFORMED, ids=lambda k: k if isinstance(k, str) else k[0])
def test_one_malformed_entry_is_logged_and_skipped(tmp_path, make_volume, caplog, monkeypatch, kind):
    import os
    import pathlib

    if kind == "unreadable" and os.geteuid() == 0:  # root reads any file: refuse it the way the kernel would
        read_text = pathlib.Path.read_text

        def refusing(path, *args, **kwargs):
            if path.name == "entry.json" and not os.stat(path).st_mode & 0o444:
                raise PermissionError(13, "Permission denied", str(path))
            return read_text(path, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "read_text", refusing)
    store = AnnotationStore(tmp_path / "project")
    good = store.save(*_on_disk(make_volume, tmp_path, 0, "a.nii.gz"))
    bad = store.save(*_on_disk(make_volume, tmp_path, 1, "b.nii.gz"))
    _malform(bad.folder, kind)
    try:
        with pytest.warns(UserWarning, match="skipping entry"), caplog.at_level("WARNING"):
            assert [e.id for e in store.entries()] == [good.id]
            assert [c.name for c in cases_from_store(store)] == [good.id]
        assert any(bad.id in r.getMessage() and "entry.json" in r.getMessage() for r in caplog.records)
        assert len(store.problems) == 1 and bad.id in store.problems[0]
        third = store.save(*_on_disk(make_volume, tmp_path, 2, "c.nii.gz"))  # the rest of the store works
        assert third.revision == 1
        assert store.summary()["images"] == 2
    finally:
        (bad.folder / "entry.json").chmod(0o644)


def _save_many(project, image_path, labels_path, who, times, start):
    """One writer process: save the same image ``times`` times with its own class name and prompts."""
    image, labels = read_image(image_path), np.load(labels_path)
    store = AnnotationStore(project, create=False)
    start.wait(60)  # both processes save at the same moment
    for i in range(times):
        store.save(image, labels, classes={who + 1: f"organ of {who}"}, prompts=[{"kind": "point", "who": who, "i": i}])


def test_two_processes_saving_at_once_lose_nothing(tmp_path, make_volume):
    import multiprocessing

    image, labels = _on_disk(make_volume, tmp_path)
    np.save(tmp_path / "labels.npy", labels)
    assert {1, 2} <= set(np.unique(labels).tolist())
    project = tmp_path / "project"
    AnnotationStore(project)
    times = 25
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [context.Process(target=_save_many, args=(project, image.path, tmp_path / "labels.npy", who, times, start))
               for who in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]

    store = AnnotationStore(project, create=False)
    (entry,) = store.entries()
    assert entry.revision == 2 * times
    assert sorted((p["who"], p["i"]) for p in entry.prompts) == sorted((w, i) for w in range(2) for i in range(times))
    assert store.classes[1] == "organ of 0" and store.classes[2] == "organ of 1"
    assert sorted(p.name for p in entry.folder.iterdir()) == [
        "entry.json", f"labels-{2 * times}.nii.gz", f"labels-{2 * times}.nii.gz.json"]


def test_opening_removes_a_killed_writers_temporary_files(tmp_path, make_volume):
    image, labels = make_volume()
    store = AnnotationStore(tmp_path / "project")
    entry = store.save(image, labels)
    stale = [store.folder / ".medseg-tmp-0123456789ab-project.json", entry.folder / ".medseg-tmp-0123456789ab-image.mha",
             entry.folder / ".medseg-tmp-0123456789ab-entry.json", entry.folder / ".0a1b2c3d.tmp-labels-2.nii.gz"]
    for path in stale:
        path.write_bytes(b"half written")
    reopened = AnnotationStore(tmp_path / "project", create=False)
    assert not any(path.exists() for path in stale)
    assert sorted(p.name for p in entry.folder.iterdir()) == ["entry.json", "image.mha", "labels-1.nii.gz", "labels-1.nii.gz.json"]
    np.testing.assert_array_equal(reopened.restore(image), labels)


def test_written_files_get_the_umask_permissions(tmp_path, make_volume):
    import os

    image, labels = make_volume()
    old = os.umask(0o022)
    try:
        entry = AnnotationStore(tmp_path / "project").save(image, labels)
    finally:
        os.umask(old)
    for path in [tmp_path / "project" / "project.json", *entry.folder.iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o644, path.name


def test_labels_and_folders_are_durable_before_entry_json_names_them(tmp_path, make_volume, monkeypatch):
    import os

    from napari_medseg import atomic

    events = []
    fsync_file, fsync_dir, replace = atomic.fsync_file, atomic.fsync_dir, os.replace
    monkeypatch.setattr(atomic, "fsync_file", lambda p: (events.append(("file", Path(p).name)), fsync_file(p)))
    monkeypatch.setattr(atomic, "fsync_dir", lambda p: (events.append(("dir", Path(p).name)), fsync_dir(p)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", Path(b).name)), replace(a, b)))
    image, labels = make_volume()
    store = AnnotationStore(tmp_path / "project")
    entry = store.save(image, labels)
    named = events.index(("replace", "entry.json"))
    before = events[:named]
    assert ("file", "labels-1.nii.gz") in before and ("file", "labels-1.nii.gz.json") in before
    assert ("dir", entry.id) in before and ("dir", "entries") in before  # the labels' and the entry's folders
    assert before.index(("replace", "image.mha")) < before.index(("dir", entry.id), before.index(("file", "labels-1.nii.gz")))


def test_save_costs_the_same_in_a_small_and_a_large_store(tmp_path, make_volume, monkeypatch):
    from napari_medseg.training import store as store_module

    def hashes_of_saves(project, others):
        store = AnnotationStore(tmp_path / project)
        for seed in range(others):
            store.save(*make_volume(seed=10 + seed))
        image, labels = make_volume(seed=0)
        calls = []
        for name in ("file_hash", "image_hash"):
            original = getattr(store_module, name)
            monkeypatch.setattr(store_module, name, lambda x, _f=original, _n=name: (calls.append(_n), _f(x))[1])
        store.save(image, labels)  # a new entry
        store.save(image, labels)  # an update
        monkeypatch.undo()
        return sorted(calls)

    small, large = hashes_of_saves("small", 1), hashes_of_saves("large", 6)
    assert small == large and 0 < len(small) <= 6


def test_a_new_image_in_a_read_only_store_is_one_line(tmp_path, make_volume, monkeypatch):
    """Creating the new entry's folder fails as on a read-only mount (permission bits do not stop root)."""
    import errno
    import os

    image, labels = make_volume()
    store = AnnotationStore(tmp_path / "project")
    real_mkdir = Path.mkdir

    def read_only_mkdir(self, *args, **kwargs):
        if self.is_relative_to(store.folder / "entries"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    with pytest.raises(MedsegError, match=r"^Cannot save into the project .*: Read-only file system \(") as info:
        store.save(image, labels)
    assert "\n" not in str(info.value)


def test_a_short_write_of_the_image_copy_never_becomes_the_entrys_image(tmp_path, make_volume, monkeypatch):
    import SimpleITK as sitk

    write = sitk.WriteImage

    def short_write(image, path, *args, **kwargs):  # what ITK leaves on a full disk, without raising
        write(image, path, *args, **kwargs)
        with open(path, "r+b") as handle:
            handle.truncate(handle.seek(0, 2) // 2)

    image, labels = make_volume()
    store = AnnotationStore(tmp_path / "project")
    monkeypatch.setattr(sitk, "WriteImage", short_write)
    with pytest.raises(MedsegError, match="image.mha: the written file is incomplete"):
        store.save(image, labels)
    monkeypatch.undo()
    assert not list((tmp_path / "project" / "entries").rglob("image.mha")) and store.entries() == []
