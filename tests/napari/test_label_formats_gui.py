"""A real napari viewer: a DICOM series opened, labels drawn and saved as DICOM-SEG, the SEG opened again as a
labels layer with names and colours that overlays the series in world coordinates."""
import numpy as np
import pytest

from napari_medseg.io import read_image

PLUGIN = "napari-medseg"


def write_series(folder, count=4, shape=(12, 10)):
    """An axial CT series as scanners write it (positions 2.5 mm apart along z)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series, frame = generate_uid(), generate_uid()
    for k in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.9.7", series, frame
        ds.PatientName, ds.PatientID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "anon", "anon", "CT", 3, k + 1
        ds.ImagePositionPatient = [-30.0, -20.0, 40.0 + 2.5 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.6], 2.5
        ds.Rows, ds.Columns = shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.full(shape, 100 * k, np.int16).tobytes()
        ds.save_as(folder / f"IM{k:04d}", enforce_file_format=True)
    return folder


def test_save_and_open_dicom_seg(make_napari_viewer, tmp_path):
    pytest.importorskip("highdicom")
    from napari_medseg._napari.layers import labels_layer_kwargs

    folder = write_series(tmp_path / "series")
    viewer = make_napari_viewer()
    (image_layer,) = viewer.open(str(folder), plugin=PLUGIN)
    image = read_image(folder)
    labels = viewer.add_labels(np.zeros(image.array.shape, np.uint8),
                               **labels_layer_kwargs(image, "organs", {1: "liver", 2: "kidney_left"}))
    labels.data[1:3, 2:6, 3:7] = 1
    labels.data[2, 8:10, 1:3] = 2
    out = tmp_path / "organs.dcm"
    labels.save(str(out), plugin=PLUGIN)
    (seg_layer,) = viewer.open(str(out), plugin=PLUGIN)
    assert seg_layer._type_string == "labels"
    info = seg_layer.metadata["medseg"]
    assert info["label_names"] == {1: "liver", 2: "kidney_left"}
    assert info["label_colors"][2] == (46, 138, 184)  # TotalSegmentator's kidney_left
    # every SEG voxel shows at the world position of the series voxel that holds the same label
    for index in np.argwhere(seg_layer.data > 0):
        world = seg_layer.data_to_world(index)
        source = np.round(image_layer.world_to_data(world)).astype(int)
        assert labels.data[tuple(source)] == seg_layer.data[tuple(index)]
