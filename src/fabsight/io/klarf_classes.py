"""Each KLARF defect's image references and class number, located in the file's own text.

Automatic defect classification (:mod:`fabsight.adc`) reads which review images belong
to each defect and writes class numbers back. The yield system downstream compares the
classified KLARF with the inspection tool's, so the write-back patches the text in place
instead of regenerating it from a :class:`~fabsight.types.WaferMap`: only the
``CLASSNUMBER`` values and the class lookup change, every other byte stays.

The file is decoded as Latin-1 (one character per byte) so offsets are byte offsets and
the text encodes back to the very same bytes. The file is first read whole by
:func:`fabsight.io.klarf.read_klarf`, which refuses malformed files with its own
messages; this module then locates what it needs and trusts the grammar.

Image references:

* KLARF 1.8: the ``ImageList`` column's ``Images n { "file" "type" k "name", ... }``;
  ``k`` is the image's number inside ``file`` (a page of a multi-page TIFF), from 1.
* KLARF 1.1/1.2: ``IMAGELIST`` holds ``n`` then ``n`` pairs (image number, image type);
  the numbers are pages, from 1, of the TIFF named by the last ``TiffFileName`` record
  before the defect's ``DefectList`` (a file may switch TIFFs between ``DefectList``
  records). When ``IMAGECOUNT`` is there too, it must agree with the list.

The defect counts a file states are checked where they are reliable: a 1.8 list's ``Data n``
(by the reader) and 1.2's ``IMAGECOUNT`` against its ``IMAGELIST``. ``SummaryList`` ``NDEFECT``
is not checked: tools write per-test counts there that do not add up to the list (the
jklarfreader fixtures say 4 for 13 defects).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fabsight.errors import FormatError
from fabsight.io.klarf import read_klarf
from fabsight.types import WaferMap

#: 1.2 tokens: quoted strings, the record terminator, bare words.
_TOKENS_12 = re.compile(r'"[^"]*"|;|[^\s;"]+')
#: 1.8 tokens: quoted strings, braces, commas, semicolons, bare words.
_TOKENS_18 = re.compile(r'"[^"]*"|[{},;]|[^\s{},;"]+')
#: The name a review code gets in the lookup when the file does not name it.
UNCLASSIFIED = "Unclassified"


@dataclass(frozen=True)
class ImageRef:
    """One review image of a defect: the file as the KLARF names it and the image number in it (from 1)."""

    file: str
    page: int = 1


@dataclass(frozen=True)
class KlarfDefect:
    """One defect in file order: its wafer, id, class number (None when NA or absent) and images."""

    wafer: str
    defect_id: int
    class_number: int | None
    images: tuple[ImageRef, ...]


@dataclass
class _Tok:
    text: str
    start: int
    end: int


#: A 1.8 defect-row cell: a value token, or an ImageList cell already read as references.
_Cell = _Tok | tuple[ImageRef, ...]


@dataclass
class _Lookup:
    """A class lookup in the text: 1.2 ``ClassLookup`` record, or 1.8 ``ClassLookupList``."""

    entries: dict[int, str]
    start: int  # 1.2: the record (replaced whole); 1.8: where new rows go (before Data's '}')
    end: int
    count: _Tok | None = None  # 1.8: the Data row count
    columns: list[tuple[str, str]] = field(default_factory=list)  # 1.8: (type, NAME)
    indent: str = ""


@dataclass
class KlarfClasses:
    """A KLARF's defects, where their class numbers sit, and how to write new ones back.

    Build it with :func:`locate_classes`; :meth:`patched` returns the file's bytes with new
    class numbers and every class named in the lookup(s).
    """

    path: Path
    raw: str  # Latin-1 text: offsets are byte offsets
    version: str
    maps: list[WaferMap]
    defects: list[KlarfDefect] = field(default_factory=list)
    slots: list[tuple[int, int]] = field(default_factory=list)  # per defect: class value span (or insert point)
    column_edits: list[tuple[int, int, str]] = field(default_factory=list)  # adding a CLASSNUMBER column
    lookups: list[_Lookup] = field(default_factory=list)
    new_lookup_at: int = 0  # where a lookup goes when the file has none
    newline: str = "\n"

    @property
    def class_names(self) -> dict[int, str]:
        """Every class number the file names (all lookups together; the first name wins)."""
        names: dict[int, str] = {}
        for lk in self.lookups:
            for k, v in lk.entries.items():
                names.setdefault(k, v)
        return names

    def patched(self, numbers: Sequence[int | None], names: Mapping[int, str]) -> bytes:
        """The file with ``numbers[i]`` as defect ``i``'s class (None: keep it; 0 where the file had
        no CLASSNUMBER column) and ``names`` added to each class lookup (numbers already named
        there keep their name)."""
        if len(numbers) != len(self.defects):
            raise ValueError(f"{len(numbers)} class numbers for {len(self.defects)} defects")
        edits = list(self.column_edits)
        for (start, end), number, d in zip(self.slots, numbers, self.defects, strict=True):
            if number is None and start != end:
                continue  # the class stays as written
            value = str(number if number is not None else (d.class_number if d.class_number is not None else 0))
            edits.append((start, end, value if start != end else f" {value}"))
        edits += self._lookup_edits(names)
        pieces, at = [], 0
        for start, end, new in sorted(edits, key=lambda e: (e[0], e[1])):  # one pass: big lots stay linear
            pieces += [self.raw[at:start], new]
            at = end
        pieces.append(self.raw[at:])
        return "".join(pieces).encode("latin-1")

    def _lookup_edits(self, names: Mapping[int, str]) -> list[tuple[int, int, str]]:
        nl = self.newline
        if not names:
            return []
        if not self.lookups:
            if self.version == "1.8":
                return [(self.new_lookup_at, self.new_lookup_at, _new_list_18(names, nl))]
            return [(self.new_lookup_at, self.new_lookup_at, _record_12(dict(names), nl) + nl)]
        edits = []
        for lk in self.lookups:
            extra = {k: v for k, v in names.items() if k not in lk.entries}
            if not extra:
                continue
            if self.version == "1.8":
                rows = "".join(f"{lk.indent}{_row_18(lk.columns, k, v)}{nl}" for k, v in extra.items())
                edits.append((lk.start, lk.start, rows))
                if lk.count is not None:
                    edits.append((lk.count.start, lk.count.end, str(len(lk.entries) + len(extra))))
            else:
                edits.append((lk.start, lk.end, _record_12({**lk.entries, **extra}, nl)))
        return edits


def _latin(text: str) -> str:
    """A UTF-8 string as it sits in the Latin-1-decoded text (so it encodes back to UTF-8 bytes)."""
    return text.encode("utf-8").decode("latin-1")


def _q(text: str) -> str:
    return '"' + _latin(str(text).replace('"', "'")) + '"'


def _record_12(entries: Mapping[int, str], nl: str) -> str:
    body = "".join(f"{nl} {k} {_q(v)}" for k, v in entries.items())
    return f"ClassLookup {len(entries)}{body};"


def _row_18(columns: Sequence[tuple[str, str]], number: int, name: str) -> str:
    values = []
    for ctype, cname in columns:
        if cname == "CLASSNUMBER":
            values.append(str(number))
        elif cname == "CLASSNAME":
            values.append(_q(name))
        else:
            values.append('""' if ctype.lower() == "string" else "0")
    return " ".join(values) + ";"


def _new_list_18(names: Mapping[int, str], nl: str) -> str:
    cols = [("int32", "CLASSNUMBER"), ("string", "CLASSNAME"), ("string", "CLASSCODE")]
    rows = "".join(f"      {_row_18(cols, k, v)}{nl}" for k, v in names.items())
    return (f"  List ClassLookupList{nl}  {{{nl}    Columns 3 {{ int32 CLASSNUMBER, string CLASSNAME, "
            f"string CLASSCODE }}{nl}    Data {len(names)}{nl}    {{{nl}{rows}    }}{nl}  }}{nl}")


def _int_or_none(path: Path, token: str, what: str) -> int | None:
    if token.upper() in ("NA", "N/A"):
        return None
    try:
        value = float(token)
    except ValueError:
        raise FormatError(path, f"{what}: {token[:40]!r} is not a number") from None
    if not value.is_integer():
        raise FormatError(path, f"{what}: {token[:40]!r} is not an integer")
    return int(value)


def _unquote(tok: str) -> str:
    return tok[1:-1] if len(tok) >= 2 and tok[0] == '"' and tok[-1] == '"' else tok


def _line_indent(raw: str, pos: int) -> str:
    line = raw[raw.rfind("\n", 0, pos) + 1 : pos]
    return line[: len(line) - len(line.lstrip())]


# ----------------------------------------------------------------------------- 1.2


def _records_12(raw: str) -> list[list[_Tok]]:
    """Records as token lists; each ends with its ``;`` token."""
    records: list[list[_Tok]] = []
    cur: list[_Tok] = []
    for m in _TOKENS_12.finditer(raw):
        cur.append(_Tok(m.group(), m.start(), m.end()))
        if m.group() == ";":
            records.append(cur)
            cur = []
    return records


@dataclass
class _State12:
    wafer: str = ""
    tiff: str = ""
    columns: list[str] = field(default_factory=list)
    spec: list[_Tok] = field(default_factory=list)
    spec_patched: set[int] = field(default_factory=set)


def _scan_12(doc: KlarfClasses) -> None:
    st = _State12()
    first_wafer = None
    for rec in _records_12(doc.raw):
        if len(rec) < 2:
            continue
        key = rec[0].text.lower()
        if key == "waferid":
            st.wafer = _unquote(rec[1].text)
            first_wafer = rec[0].start if first_wafer is None else first_wafer
        elif key == "tifffilename":
            st.tiff = _unquote(rec[1].text)
        elif key == "defectrecordspec":
            st.columns, st.spec = [t.text.upper() for t in rec[2:-1]], rec
        elif key == "classlookup":
            entries = {int(float(rec[j].text)): _unquote(rec[j + 1].text) for j in range(2, len(rec) - 2, 2)}
            doc.lookups.append(_Lookup(entries, rec[0].start, rec[-1].end))
        elif key == "defectlist":
            _defects_12(doc, st, rec[1:-1])
    doc.new_lookup_at = first_wafer if first_wafer is not None else 0


def _defects_12(doc: KlarfClasses, st: _State12, toks: list[_Tok]) -> None:
    cols = st.columns
    has_images = bool(cols) and cols[-1] == "IMAGELIST"
    k = len(cols) - 1 if has_images else len(cols)
    at = {name: j for j, name in enumerate(cols[:k])}
    if "CLASSNUMBER" not in at:
        _add_column_12(doc, st, has_images)
    i = 0
    while i + k <= len(toks):
        row = toks[i : i + k]
        i += k
        images: tuple[ImageRef, ...] = ()
        if has_images:
            n = int(float(toks[i].text))
            pairs = toks[i + 1 : i + 1 + 2 * n]
            i += 1 + 2 * n
            images = tuple(ImageRef(st.tiff, _image_number(doc.path, p.text)) for p in pairs[::2])
        did = _int_or_none(doc.path, row[at["DEFECTID"]].text, "DEFECTID") if "DEFECTID" in at else None
        did = len(doc.defects) + 1 if did is None else did
        if "IMAGECOUNT" in at and has_images:
            stated = _int_or_none(doc.path, row[at["IMAGECOUNT"]].text, "IMAGECOUNT")
            if stated is not None and stated != len(images):
                raise FormatError(doc.path, f"wafer '{st.wafer}' defect {did}: IMAGECOUNT says {stated} but "
                                            f"IMAGELIST lists {len(images)} image(s)")
        if "CLASSNUMBER" in at:
            tok = row[at["CLASSNUMBER"]]
            number = _int_or_none(doc.path, tok.text, "CLASSNUMBER")
            doc.slots.append((tok.start, tok.end))
        else:
            number = None
            doc.slots.append((row[-1].end, row[-1].end))
        doc.defects.append(KlarfDefect(st.wafer, did, number, images))


def _add_column_12(doc: KlarfClasses, st: _State12, has_images: bool) -> None:
    """A DefectRecordSpec without CLASSNUMBER gets one (before IMAGELIST, which must stay last)."""
    if id(st.spec[0]) in st.spec_patched:
        return
    st.spec_patched.add(id(st.spec[0]))
    count = st.spec[1]
    doc.column_edits.append((count.start, count.end, str(len(st.columns) + 1)))
    anchor = st.spec[-3] if has_images else st.spec[-2]  # the last fixed column's name
    doc.column_edits.append((anchor.end, anchor.end, " CLASSNUMBER"))


def _image_number(path: Path, token: str) -> int:
    number = _int_or_none(path, token, "IMAGELIST image number")
    return 0 if number is None else number


# ----------------------------------------------------------------------------- 1.8


class _Walk18:
    """A cursor over 1.8 tokens that records lots, wafers, defect rows and class lookups."""

    def __init__(self, doc: KlarfClasses) -> None:
        self.doc = doc
        self.toks = [_Tok(m.group(), m.start(), m.end()) for m in _TOKENS_18.finditer(doc.raw)]
        self.i = 0
        self.wafer = ""

    def next(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def skip_block(self) -> None:
        """From just after a ``{`` to just after its matching ``}``."""
        depth = 1
        while depth:
            t = self.next().text
            depth += (t == "{") - (t == "}")

    def node(self, rtype: str, name: str) -> _Tok:
        """The body of a record (after its ``{``) up to and including its ``}``, which is returned."""
        while True:
            tok = self.next()
            if tok.text == "}":
                return tok
            if tok.text == "Record":
                sub = self.next().text
                sub_name = "" if self.toks[self.i].text == "{" else _unquote(self.next().text)
                self.next()  # '{'
                self.record(sub, sub_name)
            elif tok.text == "Field":
                self.i += 2  # name, count
                self.next()  # '{'
                self.skip_block()
            elif tok.text == "List":
                self.list_(self.next().text.lower(), rtype, name)

    def record(self, rtype: str, name: str) -> None:
        if rtype == "WaferRecord":
            self.wafer = name
        lookups_before = len(self.doc.lookups)
        close = self.node(rtype, name)
        if rtype == "LotRecord" and len(self.doc.lookups) == lookups_before and not self.doc.new_lookup_at:
            self.doc.new_lookup_at = self.doc.raw.rfind("\n", 0, close.start) + 1

    def columns(self) -> tuple[list[tuple[str, str]], _Tok, _Tok]:
        self.next()  # '{'
        self.next()  # Columns
        count = self.next()
        self.next()  # '{'
        cols: list[tuple[str, str]] = []
        while (tok := self.next()).text != "}":
            if tok.text != ",":
                cols.append((tok.text, self.next().text.upper()))
        return cols, count, tok

    def list_(self, lname: str, rtype: str, rname: str) -> None:
        cols, count, close = self.columns()
        if lname == "defectlist" and rtype == "WaferRecord":
            self.defect_rows(cols, count, close)
            return
        if lname == "classlookuplist" and rtype == "LotRecord":
            self.lookup_rows(cols)
            return
        if self.toks[self.i].text == "Data":
            self.i += 2
            self.next()  # '{'
            self.skip_block()
        self.next()  # the List's '}'

    def rows(self, cols: Sequence[tuple[str, str]]) -> tuple[_Tok | None, list[list[_Cell]], _Tok]:
        """The Data rows (value tokens, ImageList cells parsed), the row count token and the Data '}'."""
        rows: list[list[_Cell]] = []
        count = None
        if self.toks[self.i].text == "Data":
            self.next()
            count = self.next()
            self.next()  # '{'
            while self.toks[self.i].text != "}":
                row: list[_Cell] = []
                for ctype, _ in cols:
                    row.append(self.images() if ctype.lower() == "imagelist" else self.next())
                row.append(self.next())  # ';'
                rows.append(row)
        end = self.next()  # Data's '}' (or the List's, when there is no Data)
        return count, rows, end

    def images(self) -> tuple[ImageRef, ...]:
        if self.next().text == "N":
            return ()
        self.next()  # count
        self.next()  # '{'
        refs: list[ImageRef] = []
        entry: list[str] = []
        while True:
            tok = self.next().text
            if tok in (",", "}"):
                if entry:
                    page = _int_or_none(self.doc.path, entry[2], "ImageList image number") if len(entry) > 2 else 1
                    refs.append(ImageRef(_unquote(entry[0]), 1 if page is None else page))
                entry = []
                if tok == "}":
                    return tuple(refs)
            else:
                entry.append(tok)

    def defect_rows(self, cols: list[tuple[str, str]], count: _Tok, close: _Tok) -> None:
        names = [c for _, c in cols]
        if "CLASSNUMBER" not in names:
            self.doc.column_edits += [(count.start, count.end, str(len(cols) + 1)),
                                      (close.start, close.start, ", int32 CLASSNUMBER ")]
        _, rows, _ = self.rows(cols)
        self.next()  # the List's '}'
        for row in rows:
            values = dict(zip(names, row, strict=False))
            images = tuple(ref for cell in row if isinstance(cell, tuple) for ref in cell)
            did_tok = values.get("DEFECTID")
            did = _int_or_none(self.doc.path, did_tok.text, "DEFECTID") if isinstance(did_tok, _Tok) else None
            did = len(self.doc.defects) + 1 if did is None else did
            cls = values.get("CLASSNUMBER")
            if isinstance(cls, _Tok):
                number = _int_or_none(self.doc.path, cls.text, "CLASSNUMBER")
                self.doc.slots.append((cls.start, cls.end))
            else:
                number = None
                end = row[-1]
                assert isinstance(end, _Tok)
                self.doc.slots.append((end.start, end.start))
            self.doc.defects.append(KlarfDefect(self.wafer, did, number, images))

    def lookup_rows(self, cols: list[tuple[str, str]]) -> None:
        names = [c for _, c in cols]
        count, rows, end = self.rows(cols)
        self.next()  # the List's '}'
        entries: dict[int, str] = {}
        if "CLASSNUMBER" in names and "CLASSNAME" in names:
            i, j = names.index("CLASSNUMBER"), names.index("CLASSNAME")
            for row in rows:
                num, name = row[i], row[j]
                if isinstance(num, _Tok) and isinstance(name, _Tok):
                    value = _int_or_none(self.doc.path, num.text, "ClassLookupList CLASSNUMBER")
                    if value is not None:
                        entries[value] = _unquote(name.text)
        start = self.doc.raw.rfind("\n", 0, end.start) + 1
        first = rows[0][0] if rows and isinstance(rows[0][0], _Tok) else None
        indent = _line_indent(self.doc.raw, first.start) if first else _line_indent(self.doc.raw, end.start) + "  "
        self.doc.lookups.append(_Lookup(entries, start, start, count, cols, indent))


def _scan_18(doc: KlarfClasses) -> None:
    walk = _Walk18(doc)
    walk.i = 3  # Record FileRecord "1.8"
    walk.next()  # '{'
    walk.node("FileRecord", "")


# ----------------------------------------------------------------------------- entry point


def locate_classes(path: str | Path) -> KlarfClasses:
    """Read a KLARF (checked whole by :func:`read_klarf`) and locate each defect's class and images."""
    p = Path(path)
    maps = read_klarf(p)
    raw = p.read_bytes().decode("latin-1")
    version = "1.8" if raw.lstrip().startswith("Record") else "1.2"
    doc = KlarfClasses(p, raw, version, maps, newline="\r\n" if "\r\n" in raw else "\n")
    (_scan_18 if version == "1.8" else _scan_12)(doc)
    expected = sum(len(m.defects) if m.defects is not None else 0 for m in maps)
    if expected != len(doc.defects):  # both readings must agree on what a defect is
        raise FormatError(p, f"the defect lists hold {len(doc.defects)} defects where the reader found {expected}")
    return doc
