# SPDX-License-Identifier: Apache-2.0
"""Roster sheets for class-batch burning: read them, find the header, validate every row.

A roster is the sheet a school fills in for a class: the NLPI collective registration's reader
data sheet (讀者資料檔, ODS/Excel, seed 001) or the Taipei student-card list of families who
consented (seed 004). Formats:

- ``.xlsx``, ``.xlsm``, ``.xls``, ``.xlsb``, ``.ods``: read with python-calamine (a Rust reader;
  no formulas are evaluated, cached values are used);
- ``.csv``, ``.tsv``, ``.txt``: the standard library. UTF-8 (with or without the BOM Excel's
  "CSV UTF-8" writes) is tried first; anything that is not valid UTF-8 is read as Big5 in
  Microsoft's cp950 form, which is what Excel on a Traditional Chinese Windows saves as "CSV",
  and a note says so. A UTF-16 BOM (Excel's "Unicode text") is honoured. The delimiter (comma,
  tab or semicolon) is sniffed.

Header row: the first row with a cell that names an ID-number column (身分證統一編號, 身分證字號,
身分證號, ..., or ``--id-column``). Rows above it (a title, a date) are ignored. Other columns are
found in that row by their aliases (:data:`DEFAULT_ALIASES`). Header cells are compared after
NFKC folding (full-width letters and brackets), case folding, and dropping spaces, ``*``, ``:``
and bracketed notes, so ``身分證字號（必填）`` and ``*身分證字號`` both match.

Row numbers are the sheet's own (1-based, as Excel and LibreOffice show them; for a CSV file the
record number, which is what a spreadsheet shows when it opens the file).

Validation (every row before any card is touched, :class:`Roster` keeps all problems):

- a row that consents needs a valid ID number (checksum and format, cardd.rfid.idnumber) and one
  that no other consenting row of the sheet has: every row of a duplicate is bad, since the sheet
  cannot tell which of them is right and a card carrying another child's ID is a privacy breach;
- a row without consent is never burned and its ID is not checked: a family that said no may
  have left it out, and that is not an error of the sheet;
- blank rows are skipped silently.

Consent: a cell is a yes when it is one of :data:`YES_VALUES` (after trimming, NFKC and case
folding) or a spreadsheet TRUE / number 1; everything else, blank included, is a no. The same
rule reads the optional reissue column (補發).
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cardd.errors import IdNumberInvalid, InvalidInput
from cardd.rfid.idnumber import IdKind, mask_id, validate_id

#: sheet formats python-calamine reads
SPREADSHEET_SUFFIXES = frozenset({".xlsx", ".xlsm", ".xls", ".xlsb", ".ods"})
#: delimited text read with the csv module
TEXT_SUFFIXES = frozenset({".csv", ".tsv", ".txt"})

#: cell values that mean yes in the consent and reissue columns (compared NFKC + casefolded);
#: ✔ (U+2714) and ☑ are what Excel's symbol picker gives for a check mark, so they count as ✓.
YES_VALUES = frozenset({"是", "y", "yes", "同意", "v", "✓", "✔", "☑", "true", "1"})

ROLES = ("id", "name", "class", "seat", "consent", "reissue")
#: what people call the roles in messages
ROLE_NAMES = {
    "id": "ID number",
    "name": "name",
    "class": "class",
    "seat": "seat number",
    "consent": "consent",
    "reissue": "reissue",
}

#: Default header names per role. The ID aliases are the ones school sheets use (the NLPI reader
#: data sheet says 身分證統一編號; 身份 is the common variant spelling of 身分).
DEFAULT_ALIASES: dict[str, tuple[str, ...]] = {
    "id": (
        "身分證統一編號", "身分證字號", "身分證號", "身分證號碼", "身分證編號",
        "身份證統一編號", "身份證字號", "身份證號", "身份證號碼", "身份證編號",
        "統一證號", "居留證號", "身分證/居留證號", "身分證或居留證號",
        "ID", "ID number", "ID no", "id_number", "idNumber",
    ),
    "name": ("姓名", "學生姓名", "讀者姓名", "中文姓名", "name"),
    "class": ("班級", "班別", "班", "class"),
    "seat": ("座號", "座號碼", "seat", "seat number", "seat no"),
    "consent": ("同意", "家長同意", "是否同意", "同意書", "同意燒錄", "consent"),
    "reissue": ("補發", "是否補發", "補發借閱證", "reissue"),
}  # fmt: skip

_REQUIRED = ("id", "consent")
_BRACKETS = re.compile(r"\([^)]*\)|\[[^\]]*\]|【[^】]*】|〔[^〕]*〕")
_DROP = re.compile(r"[\s*:_\-.]")


class RosterInvalid(InvalidInput):
    """The file cannot be used as a roster at all (no header, no consent column, unreadable).

    Keeps the ``invalid_input`` code (exit status 2). Bad *rows* are not raised: they are listed
    in :attr:`Roster.bad` so every one of them can be reported at once.
    """


def normalize_header(text: str) -> str:
    """How header cells and aliases are compared (see the module docstring)."""
    folded = unicodedata.normalize("NFKC", text)
    folded = _BRACKETS.sub("", folded)
    return _DROP.sub("", folded).casefold()


def is_yes(value: object) -> bool:
    """A consent / reissue cell: True only for the yes values; blank and anything else is no."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value == 1
    text = unicodedata.normalize("NFKC", cell_text(value)).strip().casefold()
    return text in YES_VALUES


def cell_text(value: object) -> str:
    """A cell as the text a person sees: integral numbers without ``.0``, dates in ISO form."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ") if value.time() != dt.time() else value.date().isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    return str(value).strip()


def column_letter(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA: the column names spreadsheets show."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


@dataclass(frozen=True)
class RosterColumns:
    """Which header names to look for, per role (the first match in the header row wins)."""

    id: tuple[str, ...] = DEFAULT_ALIASES["id"]
    name: tuple[str, ...] = DEFAULT_ALIASES["name"]
    klass: tuple[str, ...] = DEFAULT_ALIASES["class"]
    seat: tuple[str, ...] = DEFAULT_ALIASES["seat"]
    consent: tuple[str, ...] = DEFAULT_ALIASES["consent"]
    reissue: tuple[str, ...] = DEFAULT_ALIASES["reissue"]

    @classmethod
    def build(
        cls,
        *,
        consent_column: str | None = None,
        id_column: str | None = None,
        name_column: str | None = None,
        class_column: str | None = None,
        seat_column: str | None = None,
        reissue_column: str | None = None,
        explicit_consent: bool = False,
    ) -> RosterColumns:
        """Defaults, with each given name replacing that role's aliases.

        A name given on the command line is the only one looked for (a typo is reported, not
        papered over by an alias). ``consent_column`` from the configuration is looked for
        first and the default aliases after it, unless ``explicit_consent`` (the command line)
        or it differs from the default ``同意`` (a school that configured its own name).
        """
        consent: tuple[str, ...] = DEFAULT_ALIASES["consent"]
        if consent_column:
            if explicit_consent or consent_column not in DEFAULT_ALIASES["consent"]:
                consent = (consent_column,)
            else:
                consent = (consent_column, *(a for a in consent if a != consent_column))
        return cls(
            id=(id_column,) if id_column else DEFAULT_ALIASES["id"],
            name=(name_column,) if name_column else DEFAULT_ALIASES["name"],
            klass=(class_column,) if class_column else DEFAULT_ALIASES["class"],
            seat=(seat_column,) if seat_column else DEFAULT_ALIASES["seat"],
            consent=consent,
            reissue=(reissue_column,) if reissue_column else DEFAULT_ALIASES["reissue"],
        )

    def aliases(self, role: str) -> tuple[str, ...]:
        return {
            "id": self.id,
            "name": self.name,
            "class": self.klass,
            "seat": self.seat,
            "consent": self.consent,
            "reissue": self.reissue,
        }[role]


@dataclass(frozen=True, repr=False)
class RosterRow:
    """One student row of the sheet, validated."""

    #: the sheet's row number (1-based)
    row: int
    #: the canonical ID number when it is valid (``None`` otherwise, or when not checked)
    id_number: str | None
    id_kind: IdKind | None
    name: str
    klass: str
    seat: str
    consent: bool
    #: the consent cell as written, for the results ("否", "", "OK", ...)
    consent_text: str
    reissue: bool
    #: why the row cannot be burned; empty for a good row
    problems: tuple[str, ...] = ()
    #: the ID cell as written, masked (for messages about rows whose ID is not valid)
    id_shown: str = ""

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def status(self) -> str:
        """``invalid``, ``no_consent`` or ``to_burn``."""
        if not self.consent:
            return "no_consent"
        return "invalid" if self.problems else "to_burn"

    @property
    def masked_id(self) -> str:
        if self.id_number:
            return mask_id(self.id_number)
        return self.id_shown or "-"

    @property
    def where(self) -> str:
        """``row 7, class 301, seat 12`` (what the operator reads to find the student)."""
        parts = [f"row {self.row}"]
        if self.klass:
            parts.append(f"class {self.klass}")
        if self.seat:
            parts.append(f"seat {self.seat}")
        return ", ".join(parts)

    @property
    def label(self) -> str:
        """``王小明 A12*****89 (row 7, class 301, seat 12)``: never the full ID."""
        name = self.name or "(no name)"
        return f"{name} {self.masked_id} ({self.where})"

    def __repr__(self) -> str:
        return f"RosterRow({self.row}, {self.masked_id}, {self.status})"


@dataclass(frozen=True)
class Roster:
    path: Path
    #: ``xlsx``, ``ods``, ``csv``, ...
    format: str
    #: the worksheet used (``None`` for delimited text)
    sheet: str | None
    header_row: int
    #: role -> (header text as written, column letter)
    columns: dict[str, tuple[str, str]]
    rows: tuple[RosterRow, ...]
    #: things the operator should know (encoding fallback, which sheet, unknown consent values)
    notes: tuple[str, ...] = field(default=())

    @property
    def bad(self) -> list[RosterRow]:
        return [r for r in self.rows if r.status == "invalid"]

    @property
    def no_consent(self) -> list[RosterRow]:
        return [r for r in self.rows if r.status == "no_consent"]

    @property
    def to_burn(self) -> list[RosterRow]:
        return [r for r in self.rows if r.status == "to_burn"]


# -- reading the grid --------------------------------------------------------------------------


def _decode_text(raw: bytes, name: str) -> tuple[str, list[str]]:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16"), ["read as UTF-16 (it starts with a UTF-16 byte order mark)"]
    try:
        return raw.decode("utf-8-sig"), []
    except UnicodeDecodeError as utf8_error:
        try:
            text = raw.decode("cp950")
        except UnicodeDecodeError:
            raise RosterInvalid(
                f"{name} is neither UTF-8 nor Big5 text (byte {utf8_error.start} is not "
                "UTF-8): save it from the spreadsheet as \"CSV UTF-8\""
            ) from None
        return text, [
            f"{name} is not UTF-8: read it as Big5 (cp950), the encoding Excel on a Traditional "
            "Chinese Windows saves CSV in; check that the names below look right"
        ]


def _read_delimited(path: Path) -> tuple[list[list[object]], list[str]]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RosterInvalid(f"cannot read {path}: {e.strerror or e}") from None
    text, notes = _decode_text(raw, path.name)
    sample = text[:8192]
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=",\t;").delimiter
    except csv.Error:
        pass
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        grid: list[list[object]] = [list(r) for r in reader]
    except csv.Error as e:
        raise RosterInvalid(f"{path.name} is not a readable CSV file: {e}") from None
    return grid, notes


def _read_workbook(path: Path, sheet: str | None) -> list[tuple[str, list[list[object]]]]:
    import python_calamine

    try:
        book = python_calamine.CalamineWorkbook.from_path(str(path))
    except Exception as e:  # noqa: BLE001 - calamine raises its own error types per format
        raise RosterInvalid(f"cannot read {path.name} as a spreadsheet: {e}") from None
    names = list(book.sheet_names)
    if sheet is not None:
        if sheet not in names:
            raise RosterInvalid(
                f"{path.name} has no sheet named {sheet!r}; its sheets are: {', '.join(names)}"
            )
        names = [sheet]
    sheets = []
    for name in names:
        try:
            grid = book.get_sheet_by_name(name).to_python(skip_empty_area=False)
        except Exception as e:  # noqa: BLE001
            raise RosterInvalid(f"cannot read sheet {name!r} of {path.name}: {e}") from None
        rows: list[list[object]] = [list(r) for r in grid]
        sheets.append((name, rows))
    return sheets


# -- the header --------------------------------------------------------------------------------


def _match_columns(
    header: Sequence[object], columns: RosterColumns
) -> tuple[dict[str, int], list[str]]:
    """Role -> column index for one header row; and the ambiguities found."""
    cells = [normalize_header(cell_text(c)) for c in header]
    found: dict[str, int] = {}
    problems = []
    for role in ROLES:
        wanted = {normalize_header(a) for a in columns.aliases(role)}
        hits = [i for i, c in enumerate(cells) if c and c in wanted]
        if len(hits) > 1:
            problems.append(
                f"several columns could be the {ROLE_NAMES[role]} column: "
                + ", ".join(f"{cell_text(header[i])} ({column_letter(i)})" for i in hits)
                + f"; name the one to use with --{role}-column"
            )
        if hits:
            found[role] = hits[0]
    return found, problems


def _find_header(
    grid: Sequence[Sequence[object]], columns: RosterColumns
) -> tuple[int, dict[str, int], list[str]] | None:
    id_names = {normalize_header(a) for a in columns.id}
    for index, row in enumerate(grid):
        if any(normalize_header(cell_text(c)) in id_names for c in row if cell_text(c)):
            found, problems = _match_columns(row, columns)
            return index, found, problems
    return None


# -- rows --------------------------------------------------------------------------------------


def _cell(row: Sequence[object], index: int | None) -> object:
    if index is None or index >= len(row):
        return None
    return row[index]


def _masked_raw(text: str) -> str:
    """An ID cell that is not a valid number, for messages: masked when it has an ID's length."""
    if not text.strip():
        return ""
    masked = mask_id(text)
    return masked if masked.strip("*") else "(not shown)"


@dataclass
class _Draft:
    row: int
    id_number: str | None
    id_kind: IdKind | None
    id_shown: str
    name: str
    klass: str
    seat: str
    consent: bool
    consent_text: str
    reissue: bool
    problems: list[str]

    def freeze(self) -> RosterRow:
        return RosterRow(
            row=self.row, id_number=self.id_number, id_kind=self.id_kind, name=self.name,
            klass=self.klass, seat=self.seat, consent=self.consent,
            consent_text=self.consent_text, reissue=self.reissue,
            # a row without consent is never burned, so its ID is not checked (module docstring)
            problems=tuple(self.problems) if self.consent else (),
            id_shown=self.id_shown,
        )


#: consent cells that clearly say no (anything else that is not a yes gets a note)
_CLEAR_NO = frozenset({"否", "n", "no", "不同意", "false", "0", "x", "✗", "✘"})


def _draft(cells: Sequence[object], number: int, found: dict[str, int]) -> _Draft:
    id_text = cell_text(_cell(cells, found["id"]))
    consent_raw = _cell(cells, found["consent"])
    problems: list[str] = []
    id_number: str | None = None
    kind: IdKind | None = None
    if not id_text:
        problems.append("no ID number")
    else:
        try:
            checked = validate_id(id_text)
            id_number, kind = checked.value, checked.kind
        except IdNumberInvalid as e:
            problems.append(e.message)
    return _Draft(
        row=number,
        id_number=id_number,
        id_kind=kind,
        id_shown="" if id_number else _masked_raw(id_text),
        name=cell_text(_cell(cells, found.get("name"))),
        klass=cell_text(_cell(cells, found.get("class"))),
        seat=cell_text(_cell(cells, found.get("seat"))),
        consent=is_yes(consent_raw),
        consent_text=cell_text(consent_raw),
        reissue=is_yes(_cell(cells, found.get("reissue"))),
        problems=problems,
    )


def _rows(
    grid: Sequence[Sequence[object]], header: int, found: dict[str, int]
) -> tuple[list[RosterRow], list[str]]:
    drafts = [
        _draft(grid[index], index + 1, found)
        for index in range(header + 1, len(grid))
        if any(cell_text(c) for c in grid[index])
    ]
    # Duplicates among the rows that would be burned: every one of them is bad.
    by_id: dict[str, list[int]] = {}
    for d in drafts:
        if d.consent and d.id_number:
            by_id.setdefault(d.id_number, []).append(d.row)
    for d in drafts:
        if d.consent and d.id_number and len(by_id[d.id_number]) > 1:
            others = [str(r) for r in by_id[d.id_number] if r != d.row]
            word = "row" if len(others) == 1 else "rows"
            d.problems.append(
                f"duplicate: the same ID number {mask_id(d.id_number)} is also on "
                f"{word} {', '.join(others)}"
            )
    odd_consent: dict[str, list[int]] = {}
    for d in drafts:
        if not d.consent and d.consent_text:
            if unicodedata.normalize("NFKC", d.consent_text).casefold() not in _CLEAR_NO:
                odd_consent.setdefault(d.consent_text, []).append(d.row)
    notes = []
    for text, numbers in odd_consent.items():
        shown = ", ".join(str(n) for n in numbers[:10]) + (" ..." if len(numbers) > 10 else "")
        notes.append(
            f"consent cell {text!r} (row {shown}) is not a yes, so it is read as no; "
            f"yes is one of: {' '.join(sorted(YES_VALUES))}"
        )
    return [d.freeze() for d in drafts], notes


# -- the entry point ---------------------------------------------------------------------------


def roster_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in SPREADSHEET_SUFFIXES or suffix in TEXT_SUFFIXES:
        return suffix.lstrip(".")
    raise RosterInvalid(
        f"{path.name}: a roster is an .xlsx, .xls, .ods or .csv file (got {suffix or 'no suffix'})"
    )


def read_roster(
    path: str | Path, columns: RosterColumns | None = None, *, sheet: str | None = None
) -> Roster:
    """Read and validate a roster.

    :param sheet: the worksheet to use; default: the first sheet that has a header row
    :raises RosterInvalid: the file has no usable header, lacks the consent column, cannot be
        read. Bad rows are not raised: see :attr:`Roster.bad`.
    """
    path = Path(path)
    columns = columns or RosterColumns()
    fmt = roster_format(path)
    if not path.is_file():
        raise RosterInvalid(f"roster file {path} does not exist")
    notes: list[str] = []
    sheets: list[tuple[str | None, list[list[object]]]]
    if path.suffix.lower() in TEXT_SUFFIXES:
        if sheet is not None:
            raise RosterInvalid(f"{path.name} is a text file and has no sheets")
        grid, notes = _read_delimited(path)
        sheets = [(None, grid)]
    else:
        sheets = [(name, grid) for name, grid in _read_workbook(path, sheet)]
    for sheet_name, grid in sheets:
        header = _find_header(grid, columns)
        if header is None:
            continue
        index, found, problems = header
        if problems:
            raise RosterInvalid(f"{_where(path, sheet_name)}, header row {index + 1}: " + "; ".join(problems))
        missing = [r for r in _REQUIRED if r not in found]
        if missing:
            have = ", ".join(cell_text(c) for c in grid[index] if cell_text(c))
            wanted = "; ".join(
                f"{ROLE_NAMES[r]} column ({' / '.join(columns.aliases(r))})" for r in missing
            )
            raise RosterInvalid(
                f"{_where(path, sheet_name)}: the header row {index + 1} has no {wanted}. It has: "
                f"{have}. Add the column or name it with "
                + " ".join(f"--{r}-column" for r in missing)
            )
        if "name" not in found:
            notes.append("no name column: students are shown by row, class and seat only")
        if len(sheets) > 1 and sheet is None and sheet_name != sheets[0][0]:
            notes.append(f"used sheet {sheet_name!r}: the sheets before it have no header row")
        rows, row_notes = _rows(grid, index, found)
        headers = grid[index]
        return Roster(
            path=path,
            format=fmt,
            sheet=sheet_name,
            header_row=index + 1,
            columns={
                role: (cell_text(headers[i]), column_letter(i)) for role, i in found.items()
            },
            rows=tuple(rows),
            notes=tuple(notes + row_notes),
        )
    raise RosterInvalid(
        f"{path.name}: no header row found: no row has an ID-number column named "
        f"{' / '.join(columns.id)}. Name the column with --id-column"
    )


def _where(path: Path, sheet: str | None) -> str:
    return f"{path.name} sheet {sheet!r}" if sheet else path.name


def describe_problems(rows: Iterable[RosterRow]) -> list[str]:
    """``row 7 (王小明): no ID number`` lines, one per problem, in sheet order."""
    lines = []
    for r in sorted(rows, key=lambda r: r.row):
        who = r.name or "(no name)"
        for p in r.problems:
            lines.append(f"row {r.row} ({who}): {p}")
    return lines
