"""Chest X-ray data layer: readers, transforms, views, datalists, splits, demo phantoms, datasets.

Names are imported from their modules on first use (so that the command line and the datalist
tools start without loading torch and MONAI): ``monai_cxrssl.data.LoadCXRd`` works as usual.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "datalist": ["build_datalist", "check_datalist", "datalist_from_class_folders", "datalist_from_csv",
                 "datalist_from_dicom_folder", "datalist_from_image_folder", "kermany_patient_id", "load_datalist", "write_datalist"],
    "sources": ["inference_items", "resolve_datalist", "training_items"],
    "cache": ["CXRCacheDataset"],
    "loaders": ["ssl_dataloader"],
    "store": ["CXRImageStore", "CXRStoreDataset", "build_store"],
    "classification": ["ClassificationData"],
    "io": ["parse_dicom", "read_cxr", "read_dicom_header"],
    "multi_instance": ["MultiInstanceBatchSampler", "MultiInstancePairs", "group_ids", "item_groups",
                       "multi_instance_dataloader"],
    "phantoms": ["make_phantom", "write_demo_dataset"],
    "shift": ["resolve_label_map", "shifted_test_items"],
    "splits": ["format_leakage_report", "label_fraction", "leakage_report", "patient_split"],
    "targets": ["CXRTargetd", "check_targets", "positive_weights", "target_vector"],
    "transforms": ["LoadCXR", "LoadCXRd", "NormalizeCXR", "NormalizeCXRd", "ResizeCXR", "ResizeCXRd"],
    "views": ["CXRViewAugment", "PIXEL_MEAN", "PIXEL_STD", "RandCXRView", "RandCXRViewd"],
    "view_batch": ["FollowIteration", "RECIPES", "View", "ViewBatch", "local_crop_size", "multi_crop", "normalize", "pair_views",
                   "single_view", "two_views", "view_recipe"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
