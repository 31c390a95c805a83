"""napari_medseg.training: annotation store, datasets, losses and trainer (Qt-free).

Installed as a subpackage of napari_medseg from the repository's top-level ``training/`` folder.
Entry points: `pipeline.fine_tune` (what ``medseg train`` and ``python -m napari_medseg.training`` run),
`store.AnnotationStore`, `trainer.train`.
"""

# families whose models can be fine-tuned (see families.make_adapter)
TRAINABLE_FAMILIES = ("lite_medsam", "sam", "medsam", "lvm_med_vit", "swin_umamba", "swin_umamba_d", "vm_unet", "lvm_med_unet",
                      "llm_swin_umamba", "swin_smt")
