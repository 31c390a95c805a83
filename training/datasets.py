"""Training data: cases from the annotation store or from folders, the validation split, and the
sampling and augmentation helpers the family adapters build their batches with.

A `Case` is one image with its label map and the slices (along the first array axis) that the user
reviewed; only reviewed slices are trained on or scored. Folders are read in nnU-Net v2's raw
layout (``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``, ``dataset.json``, optional
``reports/<case>.txt``) or as two folders of matching file names.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_medseg.errors import MedsegError
from napari_medseg.io.image import Image

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class Case:
    name: str
    image: Image
    labels: np.ndarray  # the image's spatial shape
    reviewed: dict = field(default_factory=lambda: {"all": True, "slices": []})
    report: str = ""
    classes: dict[int, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what reading its files warned about

    @property
    def ndim(self) -> int:
        return self.labels.ndim

    def reviewed_mask(self) -> np.ndarray:
        """Boolean mask over the first axis of a volume (2-D images: one True)."""
        if self.ndim == 2 or self.reviewed.get("all"):
            return np.ones(1 if self.ndim == 2 else self.labels.shape[0], dtype=bool)
        mask = np.zeros(self.labels.shape[0], dtype=bool)
        mask[[i for i in self.reviewed.get("slices", []) if 0 <= i < len(mask)]] = True
        return mask

    def slices(self) -> list[int | None]:
        """Reviewed slice indices of a volume; ``[None]`` for a 2-D image."""
        return [None] if self.ndim == 2 else np.flatnonzero(self.reviewed_mask()).tolist()

    def plane(self, index: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(image plane, label plane) of a reviewed slice (the whole image for 2-D)."""
        if index is None:
            return self.image.array, self.labels
        return self.image.array[index], self.labels[index]


# --------------------------------------------------------------------------- loading cases

def cases_from_store(store, progress=None, cancel=None) -> list[Case]:
    """Every usable entry of an `AnnotationStore`; damaged or unavailable ones are reported and skipped."""
    from napari_medseg.progress import Progress

    entries = store.entries()
    steps = Progress(len(entries), "Reading annotations", progress=progress, cancel=cancel)
    cases = []
    for entry in entries:
        try:
            image, labels = store.load(entry)
        except MedsegError as exc:
            store._report(str(exc))
        else:
            cases.append(Case(entry.id, image, labels, dict(entry.reviewed), entry.report, dict(entry.classes),
                              _read_warnings(image)))
        steps.step()
    return cases


def _strip_suffix(name: str) -> str | None:
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _image_files(folder: Path) -> dict[str, Path]:
    files = {}
    for path in sorted(folder.iterdir()):
        stem = _strip_suffix(path.name)
        if stem is not None and path.is_file() and not path.name.startswith("."):
            files[stem] = path
    return files


def _read_warnings(*images: Image) -> list[str]:
    """Each image's read warnings, prefixed with its file name."""
    return [f"{image.path.name if image.path else 'image'}: {message}"
            for image in images for message in image.metadata.get("warnings", [])]


def _read_channels(paths: list[Path]) -> tuple[Image, list[str]]:
    """The image (channels stacked last) and every channel file's read warnings."""
    from napari_medseg.io import read_image

    images = [read_image(p) for p in paths]
    first = images[0]
    if len(images) == 1:
        return first, _read_warnings(first)
    if any(i.spatial_shape != first.spatial_shape or i.channel_axis is not None for i in images):
        raise MedsegError(f"The channels of {paths[0].name} differ in shape (or have channels themselves)")
    return first.with_array(np.stack([i.array for i in images], axis=-1), channel_axis=-1), _read_warnings(*images)


def _from_ignore(labels: np.ndarray, ignore: int | None) -> tuple[np.ndarray, dict]:
    """nnU-Net's ignore label -> reviewed slices (slices without ignored voxels) and clean labels."""
    if ignore is None or not (labels == ignore).any():
        return labels, {"all": True, "slices": []}
    ignored = labels == ignore
    labels = np.where(ignored, 0, labels)
    if labels.ndim == 2:
        raise MedsegError("2-D label maps with ignored pixels are not supported; label the whole image")
    kept = np.flatnonzero(~ignored.reshape(ignored.shape[0], -1).any(axis=1)).tolist()
    return labels, {"all": False, "slices": kept}


def nnunet_cases(dataset: Path) -> list[Case]:
    """Cases of an nnU-Net v2 raw dataset folder (``dataset.json``, ``imagesTr``, ``labelsTr``)."""
    from napari_medseg.io import read_image

    try:
        description = json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MedsegError(f"{dataset / 'dataset.json'} cannot be read: {exc}") from None
    ending = description.get("file_ending", ".nii.gz")
    names = {int(v) if not isinstance(v, list) else int(v[0]): k for k, v in description.get("labels", {}).items()}
    ignore = next((v for v, k in names.items() if k == "ignore"), None)
    classes = {v: k for v, k in names.items() if k != "ignore"}
    channels = len(description.get("channel_names", {"0": ""}))
    cases = []
    for label_path in sorted((dataset / "labelsTr").glob(f"*{ending}")):
        case = label_path.name[: -len(ending)]
        images = [dataset / "imagesTr" / f"{case}_{c:04d}{ending}" for c in range(channels)]
        if not all(p.is_file() for p in images):
            warnings.warn(f"{dataset.name}: skipping {case}: image file(s) missing in imagesTr", stacklevel=2)
            continue
        image, warned = _read_channels(images)
        label_image = read_image(label_path)
        labels, reviewed = _from_ignore(label_image.array, ignore)
        report_file = dataset / "reports" / f"{case}.txt"
        report = report_file.read_text(encoding="utf-8").strip() if report_file.is_file() else ""
        cases.append(_checked(Case(case, image, labels, reviewed, report, dict(classes),
                                   warned + _read_warnings(label_image)), label_path, set(classes) or None))
    if not cases:
        raise MedsegError(f"{dataset} holds no labelled cases (labelsTr/*{ending} with imagesTr/<case>_0000{ending})")
    return cases


def matched_cases(images: Path, labels: Path) -> list[Case]:
    """Cases from two folders whose files share names (``<case>_0000`` image names are accepted too)."""
    from napari_medseg.io import read_image

    image_files, label_files = _image_files(images), _image_files(labels)
    cases = []
    for stem, label_path in label_files.items():
        channel_files = sorted(p for s, p in image_files.items() if s.startswith(f"{stem}_") and s[len(stem) + 1:].isdigit())
        paths = [image_files[stem]] if stem in image_files else channel_files
        if not paths:
            warnings.warn(f"No image matches {label_path.name} in {images}; skipped", stacklevel=2)
            continue
        label_image = read_image(label_path)
        names = label_image.metadata.get("label_names", {})
        image, warned = _read_channels(paths)
        cases.append(_checked(Case(stem, image, label_image.array, classes=dict(names),
                                   warnings=warned + _read_warnings(label_image)), label_path))
    if not cases:
        raise MedsegError(f"No label file in {labels} has an image of the same name in {images}")
    return cases


def _checked(case: Case, label_path: Path, declared: set[int] | None = None) -> Case:
    """The case with its labels in the smallest unsigned type; label maps that would be reinterpreted (fractional
    or negative values, which a cast would wrap to 255, or values ``declared`` does not list) are refused."""
    labels = case.labels
    if labels.shape != case.image.spatial_shape:
        raise MedsegError(f"{label_path.name}: labels {labels.shape} do not match the image {case.image.spatial_shape}")
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or not np.array_equal(labels, np.round(labels)):
            raise MedsegError(f"{label_path.name}: label values must be whole numbers")
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "iub":
        raise MedsegError(f"{label_path.name}: labels must be integers, not {labels.dtype}")
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low < 0:
        raise MedsegError(f"{label_path.name}: label value {low} is negative; labels are 0 (background) "
                          "and positive class values")
    if declared is not None:
        unknown = sorted(set(np.unique(labels).tolist()) - declared - {0})
        if unknown:
            shown = ", ".join(map(str, unknown[:8])) + (", ..." if len(unknown) > 8 else "")
            raise MedsegError(f"{label_path.name}: label values {shown} are not among the dataset's classes "
                              f"({', '.join(map(str, sorted(declared)))})")
    case.labels = labels.astype(np.min_scalar_type(high), copy=False)
    return case


def cases_from_folders(images: str | Path, labels: str | Path | None = None) -> list[Case]:
    """nnU-Net raw layout (``images`` is the dataset folder, or ``imagesTr`` with ``labelsTr``) or matched names."""
    images = Path(images).expanduser()
    labels = Path(labels).expanduser() if labels else None
    for root in (images, images.parent):
        if (root / "dataset.json").is_file() and (root / "labelsTr").is_dir() and labels in (None, root / "labelsTr"):
            return nnunet_cases(root)
    if labels is None:
        raise MedsegError(f"{images} is not an nnU-Net raw dataset; give the labels folder too (--labels)")
    return matched_cases(images, labels)


def class_names(cases: list[Case]) -> dict[int, str]:
    """Every label value found (with its name where one is known), background included."""
    names = {0: "background"}
    for case in cases:
        for value in np.unique(case.labels).tolist():
            names.setdefault(int(value), case.classes.get(int(value), f"class {int(value)}"))
        names.update({k: v for k, v in case.classes.items() if k in names})
    return dict(sorted(names.items()))


def data_hash(cases: list[Case]) -> str:
    """sha256 over the images' voxels, the labels and the reviewed slices (provenance of a trained model)."""
    import hashlib

    from .store import image_hash

    digest = hashlib.sha256()
    for case in sorted(cases, key=lambda c: c.name):
        digest.update(image_hash(case.image).encode())
        digest.update(np.ascontiguousarray(case.labels).tobytes())
        digest.update(np.packbits(case.reviewed_mask()).tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- validation split

def split_cases(cases: list[Case], val_fraction: float = 0.2, seed: int = 0, guard: int = 2) -> tuple[list[Case], list[Case]]:
    """(train, validation), validation never empty.

    With several cases whole cases are held out. A single volume is split by slices instead: a
    contiguous block of its labelled reviewed slices is held out and ``guard`` slices on either side
    are used by neither part (neighbouring slices are near copies). A single 2-D image validates on itself.
    """
    if not cases:
        raise MedsegError("No labelled images to train on")
    rng = np.random.default_rng(seed)
    if len(cases) > 1:
        count = min(len(cases) - 1, max(1, round(val_fraction * len(cases))))
        held = set(rng.permutation(len(cases))[:count].tolist())
        return [c for i, c in enumerate(cases) if i not in held], [c for i, c in enumerate(cases) if i in held]
    (case,) = cases
    if case.ndim == 2:
        warnings.warn("Only one labelled 2-D image: validation uses the training image", stacklevel=2)
        return [case], [case]
    reviewed = case.reviewed_mask()
    labelled = np.flatnonzero(reviewed & case.labels.reshape(case.labels.shape[0], -1).any(axis=1))
    if len(labelled) < 3:
        raise MedsegError("Label objects on at least 3 slices of the volume (or label a second image) to train")
    size = max(1, round(val_fraction * len(labelled)))
    start = int(rng.integers(0, len(labelled) - size + 1))
    block = labelled[start:start + size]
    val_mask = np.zeros_like(reviewed)
    val_mask[block] = True
    train_mask = reviewed.copy()
    train_mask[max(0, block[0] - guard): block[-1] + guard + 1] = False
    if not train_mask.any():
        raise MedsegError("Too few reviewed slices to hold some out for validation")
    as_reviewed = lambda mask: {"all": False, "slices": np.flatnonzero(mask).tolist()}  # noqa: E731
    return [replace(case, reviewed=as_reviewed(train_mask))], [replace(case, name=f"{case.name} (held-out slices)",
                                                                       reviewed=as_reviewed(val_mask))]


# --------------------------------------------------------------------------- sampling helpers

def object_samples(cases: list[Case], min_pixels: int = 16) -> list[tuple[int, int | None, int]]:
    """(case index, slice, label value) for every object of every reviewed slice: prompt-model samples."""
    samples = []
    for c, case in enumerate(cases):
        for index in case.slices():
            _, labels = case.plane(index)
            values, counts = np.unique(labels, return_counts=True)
            samples += [(c, index, int(v)) for v, n in zip(values, counts) if v != 0 and n >= min_pixels]
    return samples


def slice_samples(cases: list[Case]) -> list[tuple[int, int | None]]:
    """(case index, slice) of every reviewed slice: samples for automatic 2-D models."""
    return [(c, index) for c, case in enumerate(cases) for index in case.slices()]


def box_of(mask: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) around a 2-D mask, pixel edges (SAM's convention)."""
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float64)


def jittered_box(mask: np.ndarray, rng: np.random.Generator, jitter: float = 0.1, min_shift: float = 2.0) -> np.ndarray:
    """The mask's box with each side moved by up to ``jitter`` of the box size (at least ``min_shift`` px)."""
    box = box_of(mask)
    size = np.array([box[2] - box[0], box[3] - box[1]] * 2)
    shift = rng.uniform(-1, 1, 4) * np.maximum(jitter * size, min_shift)
    h, w = mask.shape
    jittered = np.clip(box + shift, 0, [w, h, w, h])
    if jittered[2] - jittered[0] < 1 or jittered[3] - jittered[1] < 1:
        return box
    return jittered


def random_crop(arrays: list[np.ndarray], labels: np.ndarray, patch: tuple[int, ...], rng: np.random.Generator,
                foreground: float = 0.33, fill: list[float] | None = None) -> list[np.ndarray]:
    """A ``patch``-sized window (padded where the arrays are smaller) from ``arrays`` and ``labels``.

    With probability ``foreground`` the window is centred on a random labelled voxel (nnU-Net's
    oversampling), otherwise placed uniformly. Arrays may have trailing channel axes.
    """
    spatial = labels.shape
    foreground_voxels = np.argwhere(labels > 0) if rng.random() < foreground else np.empty((0, labels.ndim))
    starts = []
    for axis, (size, want) in enumerate(zip(spatial, patch)):
        if len(foreground_voxels):
            centre = foreground_voxels[rng.integers(len(foreground_voxels))][axis]
            start = int(np.clip(centre - want // 2, min(0, size - want), max(0, size - want)))
        else:
            start = int(rng.integers(min(0, size - want), max(0, size - want) + 1))
        starts.append(start)
    out = []
    for array, value in zip([*arrays, labels], [*(fill or [0.0] * len(arrays)), 0]):
        window = np.full(tuple(patch) + array.shape[len(spatial):], value, dtype=array.dtype)
        src = tuple(slice(max(0, s), min(n, s + p)) for s, n, p in zip(starts, spatial, patch))
        dst = tuple(slice(max(0, -s), max(0, -s) + (b.stop - b.start)) for s, b in zip(starts, src))
        window[dst] = array[src]
        out.append(window)
    return out


def flip_rotate(arrays: list[np.ndarray], rng: np.random.Generator, spatial_dims: int, rotate: bool = True) -> list[np.ndarray]:
    """The same random mirroring (each spatial axis) and, for square planes, quarter turn of every array."""
    for axis in range(spatial_dims):
        if rng.random() < 0.5:
            arrays = [np.flip(a, axis) for a in arrays]
    last = spatial_dims - 2, spatial_dims - 1
    if rotate and arrays[0].shape[last[0]] == arrays[0].shape[last[1]]:
        k = int(rng.integers(4))
        arrays = [np.rot90(a, k, axes=last) for a in arrays]
    return [np.ascontiguousarray(a) for a in arrays]


def intensity_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """nnU-Net-like intensity changes on a normalised float image: brightness, contrast, gamma, noise."""
    image = image.astype(np.float32, copy=True)
    if rng.random() < 0.15:
        image *= rng.uniform(0.75, 1.25)
    if rng.random() < 0.15:
        mean = image.mean()
        image = (image - mean) * rng.uniform(0.75, 1.25) + mean
    if rng.random() < 0.3:
        low, high = float(image.min()), float(image.max())
        span = max(high - low, 1e-6)
        image = ((image - low) / span) ** rng.uniform(0.7, 1.5) * span + low
    if rng.random() < 0.1:
        image += rng.normal(0, rng.uniform(0, 0.1) * (image.std() + 1e-6), image.shape).astype(np.float32)
    return image
