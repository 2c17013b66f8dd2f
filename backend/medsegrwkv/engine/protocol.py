"""The worker's wire format (docs/design.md §3): one JSON object per line, UTF-8, both directions.

Request:  {"id": 7, "op": "segment", ...fields}      id: a string or an integer chosen by the client
Answers:  {"id": 7, "type": "progress", "fraction": 0.4, "message": "phase 0: slice 8/12"}  (any number)
          {"id": 7, "type": "result", "result": {...}}                                       (then exactly one
          {"id": 7, "type": "error", "code": "bad_roi", "message": "One sentence."}            of these two)

Requests are checked here against `SCHEMAS`, so an op handler only ever sees well-typed fields
with their defaults filled in; anything else becomes a `bad_request` error carrying the id when
it could be read (null otherwise).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from medsegrwkv.errors import ErrorCode, MedSegError

if TYPE_CHECKING:
    import numpy as np

PROTOCOL_VERSION = 1

Json = Dict[str, Any]

# A field spec: (accepted JSON types, required, default). int excludes bool on purpose.
_STR, _INT, _BOOL, _LIST = (str,), (int,), (bool,), (list,)
_OPT_STR, _OPT_INT, _OPT_LIST = (str, type(None)), (int, type(None)), (list, type(None))
_OPT_BOOL = (bool, type(None))
_OPT_NUM = (int, float, type(None))
SCHEMAS: Dict[str, Dict[str, Tuple[tuple, bool, Any]]] = {
    "info": {},
    "models": {"task": (_OPT_STR, False, None)},
    "segment": {
        "input": (_STR, True, None),  # volume file (NRRD, NIfTI, MHA) or DICOM folder
        "output": (_STR, True, None),  # labelmap path; its suffix picks the format
        "model": (_OPT_STR, False, None),  # registered name or weights folder; None: the default
        "device": (_STR, False, "auto"),
        "tta": (_OPT_BOOL, False, None),  # None: on a GPU only (inference.device.resolve_tta)
        "postprocess": (_BOOL, False, True),
        "phase": (_OPT_INT, False, None),  # None: every phase (4D output when there are several)
        "series": (_OPT_STR, False, None),
        "cine_phase": (_OPT_INT, False, None),  # the input is this phase of the client's cine: answers report it
        "roi": (_OPT_LIST, False, None),  # [i0, j0, k0, i1, j1, k1], start inclusive, stop exclusive
        "roi_ras": (_OPT_LIST, False, None),  # [r0, a0, s0, r1, a1, s1] in mm
    },
    # Cardiac function of a whole cine: segment every phase (or take labelmaps) and measure.
    "function": {
        "input": (_OPT_STR, False, None),  # a cine file (4D) or DICOM folder; or:
        "inputs": (_OPT_LIST, False, None),  # one 3D volume file per phase, in phase order (a Slicer sequence)
        "output": (_OPT_STR, False, None),  # the phases' labelmap (4D) to write when segmenting
        "labels": (_OPT_LIST, False, None),  # existing labelmaps instead of segmenting: one 4D file or one per phase
        "model": (_OPT_STR, False, None),
        "device": (_STR, False, "auto"),
        "tta": (_OPT_BOOL, False, None),  # None: on a GPU only (inference.device.resolve_tta)
        "series": (_OPT_STR, False, None),
        "ed": (_OPT_INT, False, None),  # 0-based phase overrides
        "es": (_OPT_INT, False, None),
        "height_cm": (_OPT_NUM, False, None),
        "weight_kg": (_OPT_NUM, False, None),
    },
    "grade": {
        "input": (_STR, True, None),
        "model": (_OPT_STR, False, None),
        "device": (_STR, False, "auto"),
        "phase": (_OPT_INT, False, None),
        "series": (_OPT_STR, False, None),
        "cine_phase": (_OPT_INT, False, None),  # the input is this phase of the client's cine: answers report it
        "lv_detection": (_BOOL, False, True),
        "labels": (_OPT_STR, False, None),  # a labelmap of the graded phase (e.g. corrected) to find the LV slices in
    },
    # Click refinement: the image is sent once and cached by id; each click sends the points and mask.
    "load_image": {
        "input": (_STR, True, None),  # one 3D volume (the displayed phase), as for segment
        "phase": (_OPT_INT, False, None),  # needed when the input holds several phases
        "series": (_OPT_STR, False, None),
        "cine_phase": (_OPT_INT, False, None),  # the input is this phase of the client's cine: answers report it
    },
    "refine": {
        "image_id": (_STR, True, None),  # from load_image
        "label": (_INT, True, None),  # the structure being corrected (1 RV cavity, 2 LV myocardium, 3 LV cavity)
        "points": (_LIST, True, None),  # [{"ijk": [i, j, k], "positive": true}, ...] continuous voxel indices
        "mask": ((dict,), True, None),  # that structure's current mask: {"shape": [k, j, i], "bits": base64}
        "model": (_OPT_STR, False, None),
        "device": (_STR, False, "auto"),
    },
    "cancel": {"target": ((str, int, type(None)), False, None)},  # None: whatever is running
    "shutdown": {},
}


class ProtocolError(Exception):
    """A request that cannot be run; becomes an `error` answer."""

    def __init__(self, code: ErrorCode, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    id: Any
    op: str
    fields: Json


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _check_type(value: Any, types: tuple) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true is not an integer here
    return isinstance(value, types)


def parse_request(line: str) -> Request:
    """Decode and check one request line, filling in defaults."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"The request is not valid JSON ({exc.msg} at column {exc.colno}).") from exc
    except RecursionError as exc:  # a few KB of "[[[[..." exhaust the parser's stack
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            "The request nests arrays or objects too deeply to be read.") from exc
    except ValueError as exc:  # an integer with more digits than Python converts (sys.get_int_max_str_digits)
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            "The request holds a number with too many digits to be read.") from exc
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "A request must be a JSON object with an 'id' and an 'op'.")
    request_id = data.get("id")
    if not _valid_id(request_id):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "A request needs an 'id' that is a string or an integer.")
    op = data.get("op")
    if not isinstance(op, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "A request needs an 'op' naming the operation.", request_id)
    if op not in SCHEMAS:
        known = ", ".join(SCHEMAS)
        raise ProtocolError(ErrorCode.UNKNOWN_OP, f"Unknown op '{op}'; the worker knows: {known}.", request_id)
    fields: Json = {}
    schema = SCHEMAS[op]
    for name, (types, required, default) in schema.items():
        if name not in data or (data[name] is None and not required):
            if required:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"The {op} request needs the field '{name}'.", request_id)
            fields[name] = default
            continue
        if not _check_type(data[name], types):
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ProtocolError(ErrorCode.BAD_REQUEST,
                                f"The field '{name}' of a {op} request must be {wanted}.", request_id)
        fields[name] = data[name]
    unknown = sorted(set(data) - set(schema) - {"id", "op"})
    if unknown:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"The {op} request has unknown field(s): {', '.join(unknown)}.", request_id)
    return Request(request_id, op, fields)


def progress_message(request_id: Any, fraction: float, message: str) -> Json:
    return {"id": request_id, "type": "progress", "fraction": round(min(1.0, max(0.0, float(fraction))), 4),
            "message": message}


def result_message(request_id: Any, result: Json) -> Json:
    return {"id": request_id, "type": "result", "result": result}


def error_message(request_id: Optional[Any], code: ErrorCode, message: str) -> Json:
    return {"id": request_id, "type": "error", "code": code, "message": message}


def encode_mask(mask: "np.ndarray") -> Json:
    """A boolean array as {"shape", "bits"}: its C-order bits packed (numpy.packbits) in base64."""
    import numpy as np

    return {"shape": list(mask.shape), "bits": base64.b64encode(np.packbits(mask.astype(bool), axis=None)).decode()}


def decode_mask(data: Json, field: str = "mask") -> "np.ndarray":
    """The inverse of `encode_mask`; anything malformed is a MedSegError naming `field`."""
    import numpy as np

    shape, bits = data.get("shape"), data.get("bits")
    if not (isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape)
            and isinstance(bits, str)):
        raise MedSegError(f"The field '{field}' must be {{\"shape\": [positive integers], "
                          "\"bits\": base64 text}.", code=ErrorCode.BAD_MASK)
    try:
        packed = np.frombuffer(base64.b64decode(bits, validate=True), dtype=np.uint8)
    except ValueError as exc:
        raise MedSegError(f"The field '{field}' has bits that are not base64.", code=ErrorCode.BAD_MASK) from exc
    count = int(np.prod(shape))
    if packed.size != (count + 7) // 8:
        raise MedSegError(f"The field '{field}' holds {packed.size} bytes; shape {shape} needs "
                          f"{(count + 7) // 8}.", code=ErrorCode.BAD_MASK)
    return np.unpackbits(packed, count=count).astype(bool).reshape(shape)
