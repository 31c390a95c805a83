"""Predictors per task: box-prompted 2D, automatic 2D, text-guided 2D, automatic 3D (Qt-free)."""
