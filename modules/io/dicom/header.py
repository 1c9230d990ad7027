"""Fast reader of the few top-level tags ingestion needs from classic, uncompressed DICOM files.

Why it exists: pydicom builds a Python object for every element (GE and Siemens files carry
hundreds of private ones), which costs ~4 ms per file here, 3x dcm2niix on a 150-file series.
This reader walks the elements of a Part-10 file with little-endian syntax and keeps only the
tags in :data:`TAGS`, skipping the rest by length. Of an enhanced multi-frame file it also keeps
the few per-frame functional groups that frames.py reads (:data:`GROUP_SEQUENCES`,
:data:`GROUP_VALUES`): pydicom builds a Dataset for each of the thousands of items there, ~50 ms
for a 64-frame Philips file, 1.7x dcm2niix's whole conversion. It is deliberately narrow:
anything outside the common case (no DICM preamble, big endian, deflate, Siemens mosaic,
non-ASCII patient names, undefined-length UN elements, malformed lengths, a functional group
with an unexpected VR or value length) returns None or sets ``needs_pydicom`` so the caller uses
pydicom. tests/test_dicom_real.py checks it against pydicom
on every bundled and real DICOM file.
"""

from __future__ import annotations

import struct
from typing import Dict, Optional

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
# tag -> (keyword, VR). Values come back close to pydicom's: str for strings, a list of str
# (each stripped) for multi-valued ones, int for US.
TAGS: Dict[int, tuple] = {
    0x00080005: ("SpecificCharacterSet", "CS"),
    0x00080008: ("ImageType", "CS"),
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080060: ("Modality", "CS"),
    0x00080070: ("Manufacturer", "LO"),
    0x00100010: ("PatientName", "PN"),
    0x00100020: ("PatientID", "LO"),
    0x00100030: ("PatientBirthDate", "DA"),
    0x00101000: ("OtherPatientIDs", "LO"),
    0x00180050: ("SliceThickness", "DS"),
    0x00180086: ("EchoNumbers", "IS"),
    0x00180088: ("SpacingBetweenSlices", "DS"),
    0x00181120: ("GantryDetectorTilt", "DS"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200012: ("AcquisitionNumber", "IS"),
    0x00200013: ("InstanceNumber", "IS"),
    0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00200100: ("TemporalPositionIdentifier", "IS"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "DS"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    0x00281052: ("RescaleIntercept", "DS"),
    0x00281053: ("RescaleSlope", "DS"),
}
_MULTI = {"ImageType", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"}
# Elements whose presence means the file needs pydicom's full parser.
_NEEDS_PYDICOM = {
    0x7FE00008: "float pixels",
    0x7FE00009: "double pixels",
    0x00041220: "DICOMDIR",
}
# Enhanced multi-frame: top-level sequences kept as lists of items (dicts by keyword) ...
FUNCTIONAL_GROUPS: Dict[int, str] = {
    0x52009229: "SharedFunctionalGroupsSequence",
    0x52009230: "PerFrameFunctionalGroupsSequence",
}
# ... the functional group sequences kept in each of their items (others are skipped) ...
GROUP_SEQUENCES: Dict[int, str] = {
    0x00209113: "PlanePositionSequence",
    0x00209116: "PlaneOrientationSequence",
    0x00289110: "PixelMeasuresSequence",
    0x00289145: "PixelValueTransformationSequence",
    0x00209111: "FrameContentSequence",
    0x00189114: "MREchoSequence",
    0x00189226: "MRImageFrameTypeSequence",
    0x00189329: "CTImageFrameTypeSequence",
    0x00189751: "PETFrameTypeSequence",
}
# ... and the values kept in the items of those: tag -> (keyword, VR), as pydicom gives them.
GROUP_VALUES: Dict[int, tuple] = {
    0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00280030: ("PixelSpacing", "DS"),
    0x00281052: ("RescaleIntercept", "DS"),
    0x00281053: ("RescaleSlope", "DS"),
    0x00209128: ("TemporalPositionIndex", "UL"),
    0x00209156: ("FrameAcquisitionNumber", "US"),
    0x00189082: ("EffectiveEchoTime", "FD"),
    0x00089007: ("FrameType", "CS"),
    0x00089208: ("ComplexImageComponent", "CS"),
}
# Binary value representations of GROUP_VALUES: exactly one value each (VM 1), else pydicom.
_BINARY = {"US": struct.Struct("<H"), "UL": struct.Struct("<I"), "FD": struct.Struct("<d")}
_INTERESTING = set(TAGS) | set(_NEEDS_PYDICOM) | set(FUNCTIONAL_GROUPS) | {0x7FE00010}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")
_EXPLICIT_HEAD = struct.Struct("<HH2sH")
_IMPLICIT_HEAD = struct.Struct("<HH0sI")  # same fields as explicit, empty VR


class _Malformed(Exception):
    pass


class Header:
    """The parsed tags, readable like a pydicom Dataset (``get``, ``in``).

    pixel_offset: byte offset of the raw pixel values in the file; pixel_dtype: numpy dtype string
    of one stored value (None when pixels are not plain native integers).
    needs_pydicom: the file has features this reader leaves to pydicom.
    reached_pixel_data: the parse got to the PixelData element, so a header parsed from the
    start of a file is all of it.
    """

    reached_pixel_data = False

    def __init__(
        self, values: dict, transfer_syntax: str, pixel_offset: Optional[int], pixel_length: int, needs_pydicom: bool
    ):
        self._values = values
        self.transfer_syntax = transfer_syntax
        self.pixel_offset = pixel_offset
        self.pixel_length = pixel_length
        self.needs_pydicom = needs_pydicom
        self.pixel_dtype = self._pixel_dtype()

    def get(self, name, default=None):
        return self._values.get(name, default)

    def __contains__(self, name) -> bool:
        if name == "PixelData":
            return self.pixel_offset is not None
        return name in self._values

    def _pixel_dtype(self) -> Optional[str]:
        if self.pixel_offset is None or self.transfer_syntax not in (IMPLICIT_LE, EXPLICIT_LE):
            return None
        bits = self._values.get("BitsAllocated")
        signed = self._values.get("PixelRepresentation", 0) == 1
        if self._values.get("SamplesPerPixel", 1) != 1 or bits not in (8, 16, 32):
            return None
        try:
            frames = max(int(self._values.get("NumberOfFrames", 1) or 1), 1)
            needed = self._values["Rows"] * self._values["Columns"] * frames * bits // 8
        except (KeyError, ValueError, TypeError):
            return None
        if self.pixel_length < needed:
            return None  # truncated: let pydicom raise its precise error
        return ("<i" if signed else "<u") + str(bits // 8) if bits > 8 else ("i1" if signed else "u1")


def _decode(raw: bytes, vr: str, name: str):
    if vr == "US":
        if len(raw) < 2:
            raise _Malformed(name)
        return _U16.unpack_from(raw, 0)[0]
    text = raw.rstrip(b"\x00 ").decode("ascii").strip()
    if name in _MULTI or "\\" in text:
        return [v.strip() for v in text.split("\\")]
    return text


def _skip_undefined(buf: bytes, pos: int, explicit: bool, depth: int = 0) -> int:
    """Position after the sequence delimiter of an undefined-length sequence starting at `pos`."""
    if depth > 8:
        raise _Malformed("nesting")
    end = len(buf)
    while pos + 8 <= end:
        group, elem = _TAG.unpack_from(buf, pos)
        tag = (group << 16) | elem
        length = _U32.unpack_from(buf, pos + 4)[0]
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Malformed("item expected")
        if length != 0xFFFFFFFF:
            pos += length
            continue
        pos = _skip_item(buf, pos, explicit, depth)
    raise _Malformed("unterminated sequence")


def _skip_item(buf: bytes, pos: int, explicit: bool, depth: int) -> int:
    end = len(buf)
    while pos + 8 <= end:
        group, elem = _TAG.unpack_from(buf, pos)
        tag = (group << 16) | elem
        if tag == _ITEM_END:
            return pos + 8
        pos, length, vr, value_pos = _element_header(buf, pos, explicit)
        if length == 0xFFFFFFFF:
            if vr == b"UN":
                raise _Malformed("undefined-length UN")
            pos = _skip_undefined(buf, value_pos, explicit, depth + 1)
        else:
            pos = value_pos + length
    raise _Malformed("unterminated item")


def _sequence(buf: bytes, pos: int, length: int, explicit: bool, keep: dict) -> tuple:
    """(items, position after the sequence) of the sequence whose value starts at `pos` (defined
    or undefined `length`); each item a dict, by keyword, of its elements in `keep`: a
    FUNCTIONAL_GROUPS sequence keeps the GROUP_SEQUENCES, whose items keep the GROUP_VALUES.

    Raises:
      _Malformed: lengths that do not nest, missing delimiters, a kept element with another VR
        or value length than the standard's (the caller then leaves the file to pydicom).
    """
    undefined = length == 0xFFFFFFFF
    end = len(buf) if undefined else pos + length
    if end > len(buf):
        raise _Malformed("sequence beyond end of file")
    items: list = []
    while pos + 8 <= end:
        group, elem = _TAG.unpack_from(buf, pos)
        tag = (group << 16) | elem
        item_length = _U32.unpack_from(buf, pos + 4)[0]
        pos += 8
        if tag == _SEQ_END and undefined:
            return items, pos
        if tag != _ITEM:
            raise _Malformed("item expected")
        item_end = end if item_length == 0xFFFFFFFF else pos + item_length
        if item_end > end:
            raise _Malformed("item beyond its sequence")
        item, pos = _group_item(buf, pos, item_end, item_length == 0xFFFFFFFF, explicit, keep)
        items.append(item)
    if undefined or pos != end:
        raise _Malformed("unterminated sequence")
    return items, pos


def _group_item(buf: bytes, pos: int, end: int, undefined: bool, explicit: bool, keep: dict) -> tuple:
    """(dict of the kept elements, position after the item) of the item starting at `pos`."""
    values: dict = {}
    while pos + 8 <= end:
        group, elem = _TAG.unpack_from(buf, pos)
        tag = (group << 16) | elem
        if tag == _ITEM_END and undefined:
            return values, pos + 8
        pos, length, vr, value_pos = _element_header(buf, pos, explicit)
        if tag in keep:
            if keep is GROUP_VALUES:
                name, want_vr = GROUP_VALUES[tag]
            else:
                name, want_vr = keep[tag], "SQ"
            if explicit and vr != want_vr.encode():
                raise _Malformed(f"{name} with VR {vr!r}")
            if want_vr == "SQ":
                values[name], pos = _sequence(buf, value_pos, length, explicit, GROUP_VALUES)
                continue
            pos = value_pos + length
            if length == 0xFFFFFFFF or pos > end:
                raise _Malformed(f"{name} beyond its item")
            raw = buf[value_pos:pos]
            if want_vr in _BINARY:
                if len(raw) != _BINARY[want_vr].size:
                    raise _Malformed(f"{name} of {len(raw)} bytes")
                values[name] = _BINARY[want_vr].unpack(raw)[0]
            else:
                values[name] = _decode(raw, want_vr, name)
            continue
        if length == 0xFFFFFFFF:
            if vr == b"UN":
                raise _Malformed("undefined-length UN")
            pos = _skip_undefined(buf, value_pos, explicit)
        else:
            pos = value_pos + length
    if undefined or pos != end:
        raise _Malformed("unterminated item")
    return values, pos


def _element_header(buf: bytes, pos: int, explicit: bool):
    """(pos, length, vr, value_pos) of the element at `pos`."""
    if explicit:
        vr = buf[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            return pos, _U32.unpack_from(buf, pos + 8)[0], vr, pos + 12
        return pos, _U16.unpack_from(buf, pos + 6)[0], vr, pos + 8
    return pos, _U32.unpack_from(buf, pos + 4)[0], None, pos + 8


def parse(buf: bytes, file_size: Optional[int] = None) -> Optional[Header]:
    """Header of a Part-10 DICOM file held in `buf`, or None when this reader does not apply.

    `buf` may be only the start of a file of `file_size` bytes: the header is then read from it
    and the pixel data's length is judged against `file_size`. An element that runs past the end
    of `buf` gives None, and a header whose pixel data lies beyond it gives pixel_offset None,
    so the caller reads the whole file instead.
    """
    try:
        return _parse(buf, len(buf) if file_size is None else max(file_size, len(buf)))
    except (_Malformed, struct.error, UnicodeDecodeError, IndexError, ValueError):
        return None


def _parse(buf: bytes, file_size: int) -> Optional[Header]:
    if len(buf) < 144 or buf[128:132] != b"DICM":
        return None
    pos, end = 132, len(buf)
    transfer_syntax = ""
    # File meta group: always explicit VR little endian.
    while pos + 8 <= end and _U16.unpack_from(buf, pos)[0] == 0x0002:
        _, length, _, value_pos = _element_header(buf, pos, True)
        if _U16.unpack_from(buf, pos + 2)[0] == 0x0010:
            transfer_syntax = buf[value_pos : value_pos + length].rstrip(b"\x00 ").decode("ascii")
        pos = value_pos + length
    if transfer_syntax not in (IMPLICIT_LE, EXPLICIT_LE) and not transfer_syntax.startswith("1.2.840.10008.1.2.4."):
        return None  # big endian, deflate, RLE, unknown: pydicom
    explicit = transfer_syntax != IMPLICIT_LE
    values: dict = {}
    needs_pydicom = transfer_syntax not in (IMPLICIT_LE, EXPLICIT_LE)  # compressed pixels
    pixel_offset, pixel_length = None, 0
    reached_pixel_data = False
    # The hot loop (hundreds of private elements per file): one unpack per element, no calls.
    head = _EXPLICIT_HEAD.unpack_from if explicit else _IMPLICIT_HEAD.unpack_from
    u32 = _U32.unpack_from
    long_vrs, interesting = _LONG_VRS, _INTERESTING
    while pos + 8 <= end:
        group, elem, vr, length = head(buf, pos)
        if explicit and vr in long_vrs:
            length = u32(buf, pos + 8)[0]
            value_pos = pos + 12
        else:
            value_pos = pos + 8
        tag = (group << 16) | elem
        if tag in interesting:
            if tag in _NEEDS_PYDICOM:
                needs_pydicom = True
            elif tag in FUNCTIONAL_GROUPS:
                if explicit and vr != b"SQ":
                    raise _Malformed("functional groups that are not a sequence")
                values[FUNCTIONAL_GROUPS[tag]], pos = _sequence(buf, value_pos, length, explicit, GROUP_SEQUENCES)
                continue
            elif tag == _PIXEL_DATA:
                reached_pixel_data = True
                if length == 0xFFFFFFFF:
                    needs_pydicom = True  # encapsulated
                else:
                    pixel_offset, pixel_length = value_pos, min(length, file_size - value_pos)
                break
        if length == 0xFFFFFFFF:
            if vr == b"UN":
                return None
            pos = _skip_undefined(buf, value_pos, explicit)
            continue
        pos = value_pos + length
        if pos > end:
            raise _Malformed("element beyond end of file")
        spec = TAGS.get(tag) if tag in interesting else None
        if spec is not None:
            values[spec[0]] = _decode(buf[value_pos:pos], spec[1], spec[0])
    image_type = values.get("ImageType") or []
    if "MOSAIC" in [v.upper() for v in image_type]:
        needs_pydicom = True  # the CSA header is read with nibabel on a pydicom dataset
    parsed = Header(values, transfer_syntax, pixel_offset, pixel_length, needs_pydicom)
    parsed.reached_pixel_data = reached_pixel_data
    return parsed
