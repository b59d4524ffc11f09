"""File formats (numpy + stdlib only)."""

from prunekit.io.safetensors import read_safetensors, write_safetensors

__all__ = ["read_safetensors", "write_safetensors"]
