"""Chest X-ray data layer: readers, transforms, views, datalists, splits, demo phantoms, datasets."""

from .datalist import (
    build_datalist,
    check_datalist,
    datalist_from_class_folders,
    datalist_from_csv,
    datalist_from_dicom_folder,
    kermany_patient_id,
    load_datalist,
    write_datalist,
)
from .dataset import CXRCacheDataset, ssl_dataloader, training_items
from .io import read_cxr, read_dicom_header
from .phantoms import make_phantom, write_demo_dataset
from .splits import format_leakage_report, label_fraction, leakage_report, patient_split
from .transforms import LoadCXR, LoadCXRd, NormalizeCXR, NormalizeCXRd, ResizeCXR, ResizeCXRd
from .views import CXRViewAugment, RandCXRView, RandCXRViewd
