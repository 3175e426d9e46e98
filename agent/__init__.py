"""vlagent: a local GUI automation agent driven by Qwen3-VL."""
__version__ = "0.1.0"
