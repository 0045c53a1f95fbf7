"""The ``.vqz`` image codec: entropy coding of code grids under the prior (``coder.py``),
the container format (``vqz.py``) and the PNG / JPEG / WebP baselines (``baselines.py``)."""
