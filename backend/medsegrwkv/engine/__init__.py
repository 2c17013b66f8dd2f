"""`medsegrwkv engine`: the persistent worker that 3D Slicer talks to (docs/design.md §3).

JSON lines over stdin/stdout; the wire format is in `protocol`, the op handlers in `ops`, the
threads and the busy policy (reject) in `server`.
"""

from medsegrwkv.engine.server import Engine, run_stdio

__all__ = ["Engine", "run_stdio"]
