"""The annotation store: every accepted mask or correction, kept safe in a project folder.

Layout::

    <project>/project.json                    {"format", "version", "created", "classes"}
    <project>/entries/<entry-id>/entry.json   image reference, labels file + sha256, classes (names),
                                              the objects' own classes and colours, prompts,
                                              reviewed slices, report text, timestamps
    <project>/entries/<entry-id>/labels-<revision>.nii.gz   label map in the image's geometry
    <project>/entries/<entry-id>/image.mha    a copy, only for images without a readable file

Writes are atomic and ordered (new labels file, fsynced with its folder, then entry.json, then the old
labels file is removed), so a crash at any moment leaves the previous or the new revision, never a mix.
Writers of all processes take one lock (``<project>/.lock``, fcntl), so revisions only go up and
prompts and classes are merged, never lost. An entry whose files do not match its record, or whose
record names a file outside its folder, is reported (``problems``, logging) and skipped, never used.

The image is referenced by path, a sha256 of its voxel data and its geometry; an image opened
again anywhere is recognised by that hash (`find`). ``reviewed`` names the slices (along the first
array axis) the user checked; ``{"all": true}`` means the whole label map is checked.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_medseg import atomic
from napari_medseg.atomic import atomic_write_json
from napari_medseg.errors import ImageReadError, MedsegError
from napari_medseg.io.formats import legacy_sidecar_path, sidecar_path
from napari_medseg.io.image import Image

STORE_FORMAT = "napari-medseg annotation store"
STORE_VERSION = 1
LABELS_SUFFIX = ".nii.gz"
LOCK_NAME = ".lock"
WRITER_TEMPS = ".*.tmp-*"  # temporary files of io.write_labels before it wrote through atomic.py

log = logging.getLogger(__name__)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def image_hash(image: Image) -> str:
    """sha256 of the voxel data, its shape and type: the same image read from anywhere has the same hash."""
    array = np.ascontiguousarray(image.array)
    digest = hashlib.sha256(repr((array.shape, array.dtype.str, image.channel_axis)).encode())
    digest.update(memoryview(array.reshape(-1).view(np.uint8)))
    return digest.hexdigest()


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_image_copy(image: Image, path: Path) -> Path:
    """The image's voxels and geometry as a MetaImage (channels kept as vector components), atomically."""
    import SimpleITK as sitk

    vector = image.channel_axis is not None
    array = np.moveaxis(image.array, image.channel_axis, -1) if vector else image.array
    itk = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=vector)
    itk.SetSpacing(image.spacing)
    itk.SetOrigin(image.origin)
    itk.SetDirection(tuple(image.direction.ravel()))
    from napari_medseg.io.write import written_check

    components = array.shape[-1] if vector else 1
    verify = written_check(path, array.shape[:-1] if vector else array.shape, array.dtype, components)
    with atomic.replacing(path, verify=verify) as temp:
        sitk.WriteImage(itk, str(temp), useCompression=True)
    return path


def inside(folder: Path, name) -> Path:
    """``folder / name`` for a plain file name that stays in ``folder`` (links resolved); MedsegError otherwise."""
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name:
        raise MedsegError(f"entry.json names {name!r}, which is not a file of its folder (damaged?)")
    path = folder / name
    if path.resolve().parent != folder.resolve():
        raise MedsegError(f"entry.json names {name!r}, which leads outside its folder (damaged?)")
    return path


def _damaged(reason: str) -> MedsegError:
    return MedsegError(f"entry.json is damaged ({reason})")


def _integer(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _damaged(f"{what} is {value!r}, not an integer")
    return value


def _mapping(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise _damaged(f"{what} is {type(value).__name__}, not an object")
    return value


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise _damaged(f"{what} is {value!r}, not text")
    return value


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "image"


def _image_name(image: Image) -> str:
    if image.path is None:
        return "image"
    name = Path(image.path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm", ".tif", ".tiff", ".png", ".jpg"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def labelled_slices(labels: np.ndarray) -> list[int]:
    """Indices along the first axis of slices that hold any label (3-D label maps)."""
    return np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1)).tolist()


@dataclass
class Entry:
    """One image's annotations as recorded in ``entry.json``."""

    id: str
    folder: Path
    image: dict  # path, sha256, geometry, modality, intensity, channel_axis, copy
    labels_file: str
    labels_sha256: str
    classes: dict[int, str]
    prompts: list[dict] = field(default_factory=list)
    label_classes: dict[int, str] = field(default_factory=dict)  # the class each object was given ("lesion")
    label_colors: dict[int, tuple] = field(default_factory=dict)  # 0-255 RGB, as the labels were shown
    reviewed: dict = field(default_factory=lambda: {"all": False, "slices": []})
    report: str = ""
    revision: int = 1
    created: str = ""
    modified: str = ""

    @property
    def labels_path(self) -> Path:
        return inside(self.folder, self.labels_file)

    @property
    def copy_path(self) -> Path | None:
        return inside(self.folder, self.image["copy"]) if self.image.get("copy") else None

    @property
    def ndim(self) -> int:
        return len(self.image["geometry"]["shape"])

    def reviewed_slices(self, depth: int) -> np.ndarray:
        """Boolean mask over the first axis: which slices the user checked."""
        mask = np.zeros(depth, dtype=bool)
        if self.reviewed.get("all"):
            mask[:] = True
        else:
            indices = [i for i in self.reviewed.get("slices", []) if 0 <= i < depth]
            mask[indices] = True
        return mask

    def to_json(self) -> dict:
        return {
            "id": self.id, "image": self.image, "labels_file": self.labels_file, "labels_sha256": self.labels_sha256,
            "classes": {str(k): v for k, v in self.classes.items()}, "prompts": self.prompts,
            "label_classes": {str(k): v for k, v in self.label_classes.items()},
            "label_colors": {str(k): list(v) for k, v in self.label_colors.items()},
            "reviewed": self.reviewed, "report": self.report, "revision": self.revision,
            "created": self.created, "modified": self.modified,
        }

    @classmethod
    def from_json(cls, content, folder: Path) -> "Entry":
        """The entry a record describes, every field checked; MedsegError ("damaged") otherwise."""
        content = _mapping(content, "the record")
        for key in ("id", "image", "labels_file", "labels_sha256"):
            if key not in content:
                raise _damaged(f"no {key!r}")
        image = dict(_mapping(content["image"], "image"))
        _text(image.get("sha256"), "image sha256")
        shape = _mapping(image.get("geometry"), "image geometry").get("shape")
        if not isinstance(shape, list):
            raise _damaged(f"image shape is {shape!r}, not a list")
        [_integer(s, "an image size") for s in shape]
        if image.get("copy") is not None:
            _text(image["copy"], "image copy")
        classes = {}
        for key, name in _mapping(content.get("classes", {}), "classes").items():
            try:
                classes[int(key)] = _text(name, f"class {key}")
            except ValueError:
                raise _damaged(f"class value {key!r} is not an integer") from None
        label_classes, label_colors = {}, {}
        try:
            for key, name in _mapping(content.get("label_classes", {}), "label_classes").items():
                label_classes[int(key)] = _text(name, f"the class of label {key}")
            for key, rgb in _mapping(content.get("label_colors", {}), "label_colors").items():
                if not isinstance(rgb, list) or len(rgb) != 3:
                    raise _damaged(f"the colour of label {key} is {rgb!r}, not [R, G, B]")
                label_colors[int(key)] = tuple(_integer(c, f"a colour of label {key}") for c in rgb)
        except ValueError:
            raise _damaged("a label value of the objects is not an integer") from None
        prompts = content.get("prompts", [])
        if not isinstance(prompts, list) or not all(isinstance(p, dict) for p in prompts):
            raise _damaged("prompts are not a list of objects")
        reviewed = dict(_mapping(content.get("reviewed", {}), "reviewed"))
        slices = reviewed.get("slices", [])
        if not isinstance(slices, list):
            raise _damaged("reviewed slices are not a list")
        [_integer(i, "a reviewed slice") for i in slices]
        revision = _integer(content.get("revision", 1), "revision")
        if revision < 1:
            raise _damaged(f"revision is {revision}")
        return cls(
            id=_text(content["id"], "id"), folder=folder, image=image,
            labels_file=_text(content["labels_file"], "labels_file"),
            labels_sha256=_text(content["labels_sha256"], "labels_sha256"), classes=classes, prompts=list(prompts),
            label_classes=label_classes, label_colors=label_colors,
            reviewed=reviewed, report=_text(content.get("report", ""), "report"), revision=revision,
            created=_text(content.get("created", ""), "created"), modified=_text(content.get("modified", ""), "modified"),
        )


class AnnotationStore:
    """A project folder of annotations; see the module docstring for the layout."""

    def __init__(self, folder: str | Path, create: bool = True):
        self.folder = Path(folder).expanduser()
        self.problems: list[str] = []  # one line per entry that was skipped, from the last scan
        self._lock_depth, self._lock_fd = 0, None
        manifest = self.folder / "project.json"
        if manifest.is_file():
            self._read_manifest()
        elif not create:
            raise MedsegError(f"{self.folder} is not a napari-medseg project folder (no project.json)")
        elif self.folder.exists() and any(p.name not in (".DS_Store", LOCK_NAME) for p in self.folder.iterdir()):
            raise MedsegError(f"{self.folder} is not empty and is not a napari-medseg project; choose an empty folder")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self._locked():
                if manifest.is_file():  # another process created it meanwhile
                    self._read_manifest()
                else:
                    (self.folder / "entries").mkdir(exist_ok=True)
                    self.classes, self.created = {0: "background"}, now()
                    self._write_manifest({})
        try:
            with self._locked():  # no writer is running: any temporary file is a killed writer's
                self._remove_stale_temps()
        except OSError:
            pass  # a read-only project: nothing to clean, reading still works

    def _read_manifest(self) -> dict[int, str]:
        manifest = self.folder / "project.json"
        try:
            content = json.loads(manifest.read_text(encoding="utf-8"))
            if not isinstance(content, dict):
                raise ValueError
            classes = {int(k): str(v) for k, v in _mapping(content.get("classes", {}), "classes").items()}
        except (ValueError, MedsegError):
            raise MedsegError(f"{manifest} is damaged (not a valid project record)") from None
        except OSError as exc:
            raise MedsegError(f"{manifest} cannot be read ({exc.strerror or exc})") from None
        if content.get("format") != STORE_FORMAT:
            raise MedsegError(f"{self.folder} is not a napari-medseg project folder")
        self.classes, self.created = classes, content.get("created", "")
        return classes

    def _write_manifest(self, named: dict[int, str]) -> None:
        """Merge ``named`` into the classes on disk (other processes' included) and write them; under the lock."""
        if (self.folder / "project.json").is_file():
            self._read_manifest()
        self.classes.update(named)
        atomic_write_json(self.folder / "project.json", {
            "format": STORE_FORMAT, "version": STORE_VERSION, "created": self.created,
            "classes": {str(k): v for k, v in sorted(self.classes.items())},
        })

    @contextmanager
    def _locked(self):
        """The project's writer lock (fcntl, shared by all processes); re-entrant within this object."""
        if self._lock_depth == 0:
            fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._lock_fd = fd
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                fd, self._lock_fd = self._lock_fd, None
                os.close(fd)  # closing releases the lock

    def _remove_stale_temps(self) -> None:
        removed = atomic.remove_stale_temps(self.folder, recursive=True)
        entries = self.folder / "entries"
        for path in entries.glob(f"*/{WRITER_TEMPS}") if entries.is_dir() else []:
            if path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
        if removed:
            log.info("Annotation store %s: removed %d temporary file(s) of an interrupted save", self.folder, len(removed))

    # ---- reading -----------------------------------------------------------------------------
    def _entry_folder(self, name: str) -> Path:
        entries = self.folder / "entries"
        folder = entries / name
        if not name or Path(name).name != name or name in (".", "..") or folder.resolve().parent != entries.resolve():
            raise MedsegError(f"entry folder {name!r} is not inside {entries}")
        return folder

    def _read_entry(self, folder: Path) -> Entry:
        """An entry whose record and labels file agree; MedsegError with the reason otherwise."""
        folder = self._entry_folder(folder.name)
        record = folder / "entry.json"
        try:
            text = record.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MedsegError("entry.json is missing") from None
        except UnicodeDecodeError:
            raise _damaged("not UTF-8 text") from None
        except OSError as exc:
            raise MedsegError(f"entry.json cannot be read ({exc.strerror or exc})") from None
        try:
            content = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise _damaged(f"not valid JSON: {str(exc).splitlines()[0][:80]}") from None
        entry = Entry.from_json(content, folder)
        shape = entry.image["geometry"]["shape"]
        labels_path = entry.labels_path  # MedsegError if it leads outside the folder
        entry.copy_path
        if not labels_path.is_file():
            raise MedsegError(f"its labels file {entry.labels_file} is missing")
        try:
            digest = file_hash(labels_path)
        except OSError as exc:
            raise MedsegError(f"its labels file {entry.labels_file} cannot be read ({exc.strerror or exc})") from None
        if digest != entry.labels_sha256:
            raise MedsegError(f"its labels file {entry.labels_file} does not match the recorded sha256 (damaged?)")
        if len(shape) not in (2, 3):
            raise MedsegError(f"its image shape {shape} is not 2-D or 3-D")
        return entry

    def _folders(self, pattern: str = "*") -> list[Path]:
        entries = self.folder / "entries"
        return sorted(p for p in entries.glob(pattern) if p.is_dir()) if entries.is_dir() else []

    def entries(self) -> list[Entry]:
        """Every intact entry; damaged ones are listed in ``problems`` (and logged), not returned."""
        self.problems = []
        found = []
        for folder in self._folders():
            try:
                found.append(self._read_entry(folder))
            except MedsegError as exc:
                self._report(f"{folder.name}: {exc}")
        return found

    def _report(self, problem: str) -> None:
        self.problems.append(problem)
        message = f"Annotation store {self.folder}: skipping entry {problem}"
        log.warning(message)
        warnings.warn(message, stacklevel=3)  # the GUI shows warnings

    def _candidates(self, digest: str) -> list[Path]:
        """The folders that can hold this image's entry: their names end with its hash (see ``_new_folder``)."""
        return self._folders(f"*-{digest[:12]}")

    def find(self, image: Image, digest: str | None = None) -> Entry | None:
        """The entry of this image (same voxel data), if any; reads only the folders named after its hash."""
        digest = digest or image_hash(image)
        for folder in self._candidates(digest):
            try:
                entry = self._read_entry(folder)
            except MedsegError as exc:
                self._report(f"{folder.name}: {exc}")
                continue
            if entry.image["sha256"] == digest:
                return entry
        return None

    def entry(self, entry_id: str) -> Entry:
        return self._read_entry(self._entry_folder(entry_id))
    def read_labels(self, entry: Entry) -> np.ndarray:
        from napari_medseg.io import read_image

        try:
            labels = read_image(entry.labels_path).array
        except ImageReadError as exc:
            raise MedsegError(f"entry {entry.id}: labels cannot be read ({exc})") from None
        if list(labels.shape) != list(entry.image["geometry"]["shape"]):
            raise MedsegError(f"entry {entry.id}: labels shape {labels.shape} differs from the image's")
        return labels

    def read_image(self, entry: Entry) -> Image:
        """The entry's image, from its own file or the store's copy, checked against the recorded hash."""
        from napari_medseg.io import read_image

        candidates = []
        if entry.copy_path is not None:
            candidates.append(entry.copy_path)
        if entry.image.get("path"):
            candidates.append(Path(entry.image["path"]))
        reasons = []
        for path in candidates:
            if not path.exists():
                reasons.append(f"{path} is missing")
                continue
            try:
                image = read_image(path)
            except ImageReadError as exc:
                reasons.append(str(exc))
                continue
            if entry.image.get("channel_axis") is None and image.channel_axis is not None:
                reasons.append(f"{path} has channels, the labelled image had none")
                continue
            image.modality = entry.image.get("modality", image.modality)
            image.intensity = entry.image.get("intensity", image.intensity)
            if image_hash(image) == entry.image["sha256"]:
                return image
            reasons.append(f"{path} changed since it was labelled (voxel sha256 differs)")
        raise MedsegError(f"entry {entry.id}: image not available ({'; '.join(reasons) or 'no path recorded'})")

    def load(self, entry: Entry) -> tuple[Image, np.ndarray]:
        image = self.read_image(entry)
        labels = self.read_labels(entry)
        if tuple(labels.shape) != image.spatial_shape:
            raise MedsegError(f"entry {entry.id}: labels {labels.shape} do not fit the image {image.spatial_shape}")
        return image, labels

    def restore(self, image: Image) -> np.ndarray | None:
        """The saved labels of an image opened again, or None."""
        entry = self.find(image)
        return None if entry is None else self.read_labels(entry)

    # ---- writing -----------------------------------------------------------------------------
    def save(self, image: Image, labels: np.ndarray, *, classes: dict[int, str] | None = None,
             prompts: list[dict] | None = None, reviewed: dict | None = None, report: str | None = None,
             label_classes: dict[int, str] | None = None, label_colors: dict[int, tuple] | None = None) -> Entry:
        """Save (or update) the labels of ``image``.

        ``classes`` names the label values; ``label_classes`` (the class each object was given) and
        ``label_colors`` (RGB, 0-255 or napari's 0-1) replace the entry's, when given, and are written
        with the labels too.

        ``prompts`` are appended to the entry's history (each a dict such as ``{"kind": "box",
        "box": [x0, y0, x1, y1], "z": 12, "label": 1}``); ``reviewed`` (``{"all": bool, "slices":
        [...]}``) is merged with what was reviewed before; without it, slices that hold labels count
        as reviewed (2-D images: the whole image).
        """
        labels = np.asarray(labels)
        if labels.shape != image.spatial_shape:
            raise MedsegError(f"Labels of shape {labels.shape} do not match the image's {image.spatial_shape}")
        digest = image_hash(image)
        try:
            with self._locked():  # read, merge and write as one step: other processes wait
                return self._save(image, digest, labels, classes, prompts, reviewed, report, label_classes,
                                  label_colors)
        except OSError as exc:  # a read-only or full project folder: nothing was named in entry.json
            where = f" ({exc.filename})" if exc.filename else ""
            raise MedsegError(f"Cannot save into the project {self.folder}: {exc.strerror or exc}{where}") from None

    def _save(self, image, digest, labels, classes, prompts, reviewed, report, label_classes=None,
              label_colors=None) -> Entry:
        from napari_medseg.io import write_labels
        from napari_medseg.io.segments import checked_color

        self._read_manifest()  # other processes' classes
        entry = self.find(image, digest)
        stamp = now()
        if entry is None:
            folder = self._new_folder(image, digest)
            if (folder / "entry.json").exists() or (folder / "entry.json").is_symlink():
                try:  # found but unusable: never overwrite (or delete through) its record
                    self._read_entry(folder)
                    reason = "it holds another image with the same hash prefix"
                except MedsegError as exc:
                    reason = str(exc)
                raise MedsegError(f"Entry {folder.name} cannot be updated: {reason}; repair or remove it first")
            entry = Entry(id=folder.name, folder=folder, image=self._image_reference(image, digest, folder),
                          labels_file="", labels_sha256="", classes={}, created=stamp, revision=0)
        old_labels = entry.labels_path if entry.labels_file else None
        entry.revision = max(entry.revision, self._highest_revision(entry.folder)) + 1
        entry.modified = stamp
        entry.labels_file = f"labels-{entry.revision}{LABELS_SUFFIX}"
        names = {0: "background", **entry.classes, **{int(k): str(v) for k, v in (classes or {}).items()}}
        for value in np.unique(labels).tolist():
            names.setdefault(int(value), self.classes.get(int(value), f"label {int(value)}"))
        entry.classes = dict(sorted(names.items()))
        entry.prompts = [*entry.prompts, *[{"time": stamp, **p} for p in (prompts or [])]]
        entry.reviewed = self._merge_reviewed(entry.reviewed, reviewed, labels)
        if report is not None:
            entry.report = report
        if label_classes is not None:
            entry.label_classes = {int(k): str(v) for k, v in label_classes.items() if v}
        if label_colors is not None:
            entry.label_colors = {int(k): checked_color(v, int(k)) for k, v in label_colors.items()}
        labels_path = entry.labels_path
        write_labels(labels, image.with_array(labels), labels_path, label_names=entry.classes,
                     label_colors=entry.label_colors or None, label_classes=entry.label_classes or None)
        for path in (labels_path, sidecar_path(labels_path)):  # durable before entry.json names them
            if path.is_file():
                atomic.fsync_file(path)
        atomic.fsync_dir(entry.folder)
        entry.labels_sha256 = file_hash(labels_path)
        atomic_write_json(entry.folder / "entry.json", entry.to_json())
        if old_labels is not None and old_labels != labels_path:
            old_labels.unlink(missing_ok=True)
            sidecar_path(old_labels).unlink(missing_ok=True)
            legacy_sidecar_path(old_labels).unlink(missing_ok=True)  # an entry saved before one sidecar per file
        named = {k: v for k, v in entry.classes.items() if not v.startswith("label ")}
        if any(self.classes.get(k) != v for k, v in named.items()):
            self._write_manifest(named)
        return entry

    @staticmethod
    def _highest_revision(folder: Path) -> int:
        """The highest labels-<n> file in the folder: a save killed before entry.json named it still counts."""
        found = [re.fullmatch(rf"labels-(\d+){re.escape(LABELS_SUFFIX)}", p.name) for p in folder.iterdir()]
        return max((int(m.group(1)) for m in found if m), default=0)

    def _new_folder(self, image: Image, digest: str) -> Path:
        folder = self.folder / "entries" / f"{_slug(_image_name(image))}-{digest[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        atomic.fsync_dir(folder.parent)
        return folder

    @staticmethod
    def _image_reference(image: Image, digest: str, folder: Path) -> dict:
        path = Path(image.path).resolve() if image.path is not None else None
        reference = {
            "path": str(path) if path is not None else None, "sha256": digest, "geometry": image.geometry(),
            "modality": image.modality, "intensity": image.intensity, "channel_axis": image.channel_axis,
            "dtype": str(image.array.dtype), "copy": None,
        }
        if path is None or not path.exists():  # nothing to re-read it from: keep the voxels here
            reference["copy"] = write_image_copy(image, folder / "image.mha").name
        return reference

    @staticmethod
    def _merge_reviewed(before: dict, new: dict | None, labels: np.ndarray) -> dict:
        if labels.ndim == 2:
            return {"all": True, "slices": []}
        if new is None:
            new = {"all": False, "slices": labelled_slices(labels)}
        slices = sorted({int(i) for i in [*before.get("slices", []), *new.get("slices", [])]})
        return {"all": bool(before.get("all") or new.get("all")), "slices": slices}

    def set_report(self, image: Image, text: str) -> Entry:
        with self._locked():
            entry = self.find(image)
            if entry is None:
                raise MedsegError("Save labels for this image before attaching a report")
            entry.report, entry.modified = text, now()
            atomic_write_json(entry.folder / "entry.json", entry.to_json())
        return entry

    def remove(self, entry: Entry) -> None:
        with self._locked():
            shutil.rmtree(self._entry_folder(entry.folder.name))

    # ---- summaries ---------------------------------------------------------------------------
    def summary(self) -> dict:
        """Counts for the GUI: images, reviewed slices, labelled 2-D images, skipped entries."""
        entries = self.entries()
        slices = sum(
            (int(e.image["geometry"]["shape"][0]) if e.reviewed.get("all") else len(e.reviewed.get("slices", [])))
            for e in entries if e.ndim == 3
        )
        return {"images": len(entries), "volumes": sum(e.ndim == 3 for e in entries),
                "images_2d": sum(e.ndim == 2 for e in entries), "reviewed_slices": slices,
                "skipped": list(self.problems)}

    def data_hash(self) -> str:
        """One sha256 over every intact entry's image hash, labels and reviewed slices (training provenance)."""
        digest = hashlib.sha256()
        for entry in self.entries():
            digest.update(json.dumps([entry.image["sha256"], entry.labels_sha256, entry.reviewed], sort_keys=True).encode())
        return digest.hexdigest()

    # ---- nnU-Net raw datasets ------------------------------------------------------------------
    def export_nnunet(self, target: str | Path, dataset_name: str | None = None) -> Path:
        """Write ``imagesTr/``, ``labelsTr/``, ``dataset.json`` (and ``reports/``) in nnU-Net v2's raw layout.

        Slices the user did not review get nnU-Net's ``ignore`` label (the highest value), so
        partially checked volumes train correctly with nnU-Net's sparse-annotation support.
        """
        from napari_medseg.io import write_labels

        target = Path(target).expanduser()
        for sub in ("imagesTr", "labelsTr"):
            (target / sub).mkdir(parents=True, exist_ok=True)
        entries = self.entries()
        if not entries:
            raise MedsegError(f"{self.folder} holds no usable annotations to export")
        classes = {0: "background"}
        loaded = []
        for entry in entries:
            try:
                loaded.append((entry, *self.load(entry)))
            except MedsegError as exc:
                self._report(str(exc))
                continue
            classes.update(entry.classes)
        ignore = max(classes) + 1
        channels, modality = 1, "unknown"
        cases = {}
        for index, (entry, image, labels) in enumerate(loaded):
            case = f"case_{index:04d}"
            cases[case] = entry.id
            modality = image.modality if image.modality != "unknown" else modality
            spatial = image.with_array(np.zeros(image.spatial_shape, np.uint8), channel_axis=None)
            planes = [image.array] if image.channel_axis is None else list(np.moveaxis(image.array, image.channel_axis, 0))
            channels = len(planes)
            for c, plane in enumerate(planes):
                write_image_copy(spatial.with_array(plane), target / "imagesTr" / f"{case}_{c:04d}.nii.gz")
            if labels.ndim == 3 and not entry.reviewed.get("all"):
                labels = labels.astype(np.min_scalar_type(ignore), copy=True)
                labels[~entry.reviewed_slices(labels.shape[0])] = ignore
            write_labels(labels, spatial, target / "labelsTr" / f"{case}.nii.gz")
            if entry.report:
                (target / "reports").mkdir(exist_ok=True)
                (target / "reports" / f"{case}.txt").write_text(entry.report, encoding="utf-8")
        names = {name: value for value, name in sorted(classes.items())}
        if any(e.ndim == 3 and not e.reviewed.get("all") for e, _, _ in loaded):
            names["ignore"] = ignore
        channel_names = {str(c): (modality if channels == 1 else f"{modality}_{c}") for c in range(channels)}
        if channels == 3 and all(image.is_rgb for _, image, _ in loaded):
            channel_names = {"0": "R", "1": "G", "2": "B"}
        atomic_write_json(target / "dataset.json", {
            "name": dataset_name or self.folder.name, "channel_names": channel_names, "labels": names,
            "numTraining": len(loaded), "file_ending": ".nii.gz",
            "medseg": {"store": str(self.folder), "cases": cases},
        })
        return target

    @classmethod
    def import_nnunet(cls, dataset: str | Path, project: str | Path) -> "AnnotationStore":
        """A project (new or existing) holding every case of an nnU-Net raw dataset (labelsTr + imagesTr)."""
        from .datasets import nnunet_cases

        store = cls(project)
        for case in nnunet_cases(Path(dataset).expanduser()):
            store.save(case.image, case.labels, classes=case.classes, reviewed=case.reviewed, report=case.report or None)
        return store
