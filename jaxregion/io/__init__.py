"""Reading and writing: HF checkpoints, GGUF, safetensors, the hub, atomic files."""
