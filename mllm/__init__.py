"""mllm: train LLaVA / MiniGPT-4 / BLIP-2 style multimodal LLMs from typed YAML recipes."""

__version__ = "0.1.0"
