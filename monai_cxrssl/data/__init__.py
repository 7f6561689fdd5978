"""Chest X-ray data layer: readers, transforms, views, datalists, splits and demo phantoms."""
