"""Editing images through the prior: ``inpaint`` / ``repair`` (``inpaint.py``), their
candidates drawn, weighted and resampled (``candidates.py``), and masks (``masks.py``)."""
