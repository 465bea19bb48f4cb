"""Tracing a model into a torch.fx graph annotated with tensor shapes and per-node FLOPs."""

from __future__ import annotations

from .tracing import annotate_shapes, node_module_path, trace

__all__ = ["annotate_shapes", "node_module_path", "trace"]
