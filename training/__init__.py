"""napari_medseg.training: annotation store, datasets, losses and trainer (Qt-free).

Installed as a subpackage of napari_medseg from the repository's top-level ``training/`` folder.
"""
