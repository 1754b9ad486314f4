"""The browser demo of a model (``mllm web``), on Gradio: ``app`` builds and serves the page,
``conversation`` holds a tab's chat and its steps (no Gradio), ``model_card`` and ``examples``
fill its side panels, and ``page`` drives it from a headless Chromium for the tests and the
screenshots in ``docs/``.

Gradio is an optional dependency (``pip install 'mllm[web]'``); nothing here is imported
unless ``mllm web`` runs.
"""
