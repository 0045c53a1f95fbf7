"""``vqgen serve``: the page's actions, testable without a UI library (``serving.py``), and
the Gradio page over them (``app.py``)."""
