"""Screenshot of the real napari viewer browsing the make_pyramid.py slide with OME-Zarr labels (issue 21).

    xvfb-run -a -s "-screen 0 1366x768x24" python benchmarks/shot_large_pyramid.py /tmp/pyramid/slide.ome.zarr OUT.png

Writes a "nuclei" label image into the slide's OME-Zarr (the 10 % most hematoxylin-stained pixels of one 2048^2 region,
read and written chunk by chunk), opens the slide through the plugin's reader (multiscale image + labels layers),
zooms to full resolution on that region and saves a screenshot of the whole window. Prints the RSS afterwards.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def nuclei_labels(path: Path, y: int, x: int, side: int = 2048) -> None:
    import dask.array as da
    from scipy import ndimage

    from napari_medseg.io import read_image
    from napari_medseg.io.omezarr import write_zarr_labels

    image = read_image(path)
    from skimage.color import rgb2hed

    crop = np.asarray(image.array[y:y + side, x:x + side])
    hematoxylin = rgb2hed(crop)[..., 0]  # the nuclear stain of the IHC tiles
    dark = ndimage.binary_opening(hematoxylin > np.percentile(hematoxylin, 90), iterations=2)
    labelled, _ = ndimage.label(dark)
    sizes = np.bincount(labelled.ravel())
    keep = (sizes > 60)[labelled] & (labelled > 0)
    h, w = image.spatial_shape
    labels = da.zeros((h, w), dtype=np.uint8, chunks=512)  # lazy: nothing of the full grid is held
    labels[y:y + side, x:x + side] = keep.astype(np.uint8)
    write_zarr_labels(labels, image, path, {1: "nucleus"}, label_colors={1: (0, 255, 120)}, name="nuclei",
                      regions=[(slice(y, y + side), slice(x, x + side))])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path, out = Path(argv[0]), Path(argv[1])
    y, x = 8000, 9000
    nuclei_labels(path, y, x)
    import napari
    import psutil

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    start = time.perf_counter()
    viewer.open(str(path), plugin="napari-medseg")
    for _ in range(20):
        napari.qt.get_qapp().processEvents()
    print(f"opened in {time.perf_counter() - start:.2f} s: {[layer.name for layer in viewer.layers]}")
    image = viewer.layers[0]
    scale = image.scale[-1]
    viewer.camera.center = (0, (y + 700) * scale, (x + 900) * scale)
    viewer.camera.zoom = 1 / scale  # one screen pixel per full-resolution pixel
    viewer.layers[-1].opacity = 0.45
    for _ in range(60):
        napari.qt.get_qapp().processEvents()
        time.sleep(0.05)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"saved {out}; data level shown {image.data_level} of {len(image.data)}; "
          f"RSS {psutil.Process().memory_info().rss / 2**20:.0f} MiB")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
