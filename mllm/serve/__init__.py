"""Serving a model over HTTP: an OpenAI-compatible chat-completions API (``mllm serve``)."""
