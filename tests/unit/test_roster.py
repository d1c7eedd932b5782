# SPDX-License-Identifier: Apache-2.0
"""Roster sheets: header detection, aliases, formats, encodings, validation of every row."""

from __future__ import annotations

import importlib.util

import pytest
from openpyxl import Workbook

from cardd.errors import InvalidInput
from cardd.rfid.idnumber import IdKind, check_digit
from cardd.rfid.roster import (
    RosterColumns,
    RosterInvalid,
    cell_text,
    column_letter,
    describe_problems,
    is_yes,
    normalize_header,
    read_roster,
)
from tests.helpers import FIXTURES

ROSTERS = FIXTURES / "rosters"


def _generator():
    spec = importlib.util.spec_from_file_location("make_rosters", ROSTERS / "make_rosters.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def valid_id(prefix: str) -> str:
    return prefix + str(check_digit(prefix))


A, B, C, D = (valid_id(p) for p in ("A12345678", "B20000000", "C10000001", "D20000002"))


def write_csv(tmp_path, text: str, name: str = "roster.csv", encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


# -- the committed fixtures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["class_roster.xlsx", "class_roster.ods", "class_roster.csv", "class_roster_big5.csv"]
)
def test_every_format_gives_the_generator_rows(name):
    roster = read_roster(ROSTERS / name)
    assert roster.header_row == GEN.HEADER_ROW == 3
    assert len(roster.rows) == len(GEN.STUDENTS) == 40
    assert {r.row for r in roster.bad} == set(GEN.BAD_ROWS)
    for row in roster.bad:
        assert GEN.BAD_ROWS[row.row] in " ".join(row.problems)
    assert {r.row for r in roster.no_consent} == GEN.NO_CONSENT_ROWS
    assert len(roster.to_burn) == 35
    for row, student in zip(roster.rows, GEN.STUDENTS, strict=True):
        assert row.name == student["姓名"]
        assert row.seat == str(student["座號"]) and row.klass == "301"
        if row.status == "to_burn":
            # full-width and lower-case input comes out canonical
            assert row.id_number == GEN._text(student["身分證統一編號"]).upper().translate(
                {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
            )
    assert roster.rows[13].id_kind is IdKind.RESIDENT_NEW
    assert [r.row for r in roster.rows if r.reissue] == [GEN.HEADER_ROW + 31]


def test_all_formats_give_identical_rows():
    rows = {
        name: read_roster(ROSTERS / name).rows
        for name in ("class_roster.xlsx", "class_roster.ods", "class_roster.csv", "class_roster_big5.csv")
    }
    first = rows["class_roster.xlsx"]
    for name, got in rows.items():
        assert got == first, name


def test_big5_csv_is_read_with_a_note_and_utf8_without():
    big5 = read_roster(ROSTERS / "class_roster_big5.csv")
    assert any("Big5 (cp950)" in n for n in big5.notes)
    assert big5.rows[0].name == GEN.STUDENTS[0]["姓名"]
    assert not any("Big5" in n for n in read_roster(ROSTERS / "class_roster.csv").notes)


def test_fixture_columns_and_sheet():
    roster = read_roster(ROSTERS / "class_roster.xlsx")
    assert roster.sheet == "301班" and roster.format == "xlsx"
    assert roster.columns["id"] == ("身分證統一編號", "E")
    assert roster.columns["consent"] == ("同意", "G") and roster.columns["reissue"] == ("補發", "H")


# -- header detection and aliases --------------------------------------------------------------


def test_header_found_below_title_rows_with_decorated_names(tmp_path):
    path = write_csv(
        tmp_path,
        "三年二班 借閱證名冊,,,\n製表日期 2024-09-01,,,\n,,,\n"
        f"＊姓名,身份證字號（必填）,家長同意 ,座號\n王小明,{A},是,1\n",
    )
    roster = read_roster(path)
    assert roster.header_row == 4
    assert roster.columns == {
        "name": ("＊姓名", "A"),
        "id": ("身份證字號（必填）", "B"),
        "consent": ("家長同意", "C"),
        "seat": ("座號", "D"),
    }
    [row] = roster.rows
    assert (row.row, row.name, row.id_number, row.consent, row.seat) == (5, "王小明", A, True, "1")


@pytest.mark.parametrize(
    "header", ["身分證統一編號", "身分證字號", "身分證號", "身份證號碼", "ID", "id number", "ＩＤ"]
)
def test_id_aliases(tmp_path, header):
    roster = read_roster(write_csv(tmp_path, f"姓名,{header},同意\n甲,{A},Y\n"))
    assert roster.rows[0].id_number == A


def test_header_normalization():
    assert normalize_header("身分證字號（必填）") == normalize_header("身分證字號")
    assert normalize_header(" *ID Number: ") == normalize_header("id_number") == "idnumber"
    assert column_letter(0) == "A" and column_letter(25) == "Z" and column_letter(27) == "AB"


def test_no_header_row_is_refused(tmp_path):
    with pytest.raises(RosterInvalid) as e:
        read_roster(write_csv(tmp_path, "姓名,學號,同意\n甲,123,是\n"))
    assert "no header row" in str(e.value) and "--id-column" in str(e.value)
    assert isinstance(e.value, InvalidInput) and e.value.code == "invalid_input"


def test_missing_consent_column_is_refused_with_what_the_header_has(tmp_path):
    with pytest.raises(RosterInvalid) as e:
        read_roster(write_csv(tmp_path, f"姓名,身分證字號,備註\n甲,{A},\n"))
    message = str(e.value)
    assert "consent column" in message and "同意" in message and "備註" in message


def test_two_id_columns_are_ambiguous(tmp_path):
    with pytest.raises(RosterInvalid) as e:
        read_roster(write_csv(tmp_path, f"姓名,身分證字號,ID,同意\n甲,{A},{A},是\n"))
    assert "several columns" in str(e.value) and "(B)" in str(e.value) and "(C)" in str(e.value)


def test_command_line_names_replace_the_aliases(tmp_path):
    path = write_csv(tmp_path, f"學生,證號,OK嗎,重發,班級\n甲,{A},是,是,301\n")
    with pytest.raises(RosterInvalid):
        read_roster(path)
    columns = RosterColumns.build(
        id_column="證號", name_column="學生", consent_column="OK嗎", explicit_consent=True,
        reissue_column="重發",
    )
    [row] = read_roster(path, columns).rows
    assert (row.name, row.id_number, row.consent, row.reissue, row.klass) == ("甲", A, True, True, "301")
    # an explicit name is the only one looked for: the default 同意 no longer matches
    other = write_csv(tmp_path, f"姓名,身分證字號,同意\n甲,{A},是\n", "other.csv")
    with pytest.raises(RosterInvalid):
        read_roster(other, RosterColumns.build(consent_column="家長簽名", explicit_consent=True))


def test_configured_consent_column(tmp_path):
    path = write_csv(tmp_path, f"姓名,身分證字號,家長簽名\n甲,{A},V\n")
    assert read_roster(path, RosterColumns.build(consent_column="家長簽名")).rows[0].consent
    # the default configuration value 同意 still accepts the other default aliases
    path2 = write_csv(tmp_path, f"姓名,身分證字號,是否同意\n甲,{A},V\n", "b.csv")
    assert read_roster(path2, RosterColumns.build(consent_column="同意")).rows[0].consent


# -- validation --------------------------------------------------------------------------------


def test_every_bad_row_is_reported_at_once_with_sheet_row_numbers(tmp_path):
    bad_checksum = A[:9] + str((int(A[9]) + 1) % 10)
    text = (
        "名冊\n"
        "姓名,身分證字號,同意\n"       # row 2
        f"甲,{A},是\n"                 # 3 ok
        f"乙,{bad_checksum},是\n"      # 4 checksum
        ",,\n"                         # 5 blank: skipped silently
        "丙,,是\n"                     # 6 missing
        f"丁,{B},是\n"                 # 7 duplicate of 9 and 10
        f"戊,A12-345678,是\n"          # 8 punctuation
        f"己,{B},是\n"                 # 9
        f"庚,{B.lower()},Y\n"          # 10 same ID, typed in lower case
        f"辛,{C},否\n"                 # 11 no consent
        f"壬,{C},是\n"                 # 12 not a duplicate: row 11 is never burned
        "癸,XYZ,\n"                    # 13 no consent: its ID is not checked
    )
    roster = read_roster(write_csv(tmp_path, text))
    assert [r.row for r in roster.rows] == [3, 4, 6, 7, 8, 9, 10, 11, 12, 13]
    assert [r.row for r in roster.bad] == [4, 6, 7, 8, 9, 10]
    assert [r.row for r in roster.to_burn] == [3, 12]
    assert [r.row for r in roster.no_consent] == [11, 13]
    by_row = {r.row: " ".join(r.problems) for r in roster.bad}
    assert "check digit" in by_row[4]
    assert by_row[6] == "no ID number"
    assert "also on rows 9, 10" in by_row[7] and "also on rows 7, 10" in by_row[9]
    assert "letters A to Z and the digits" in by_row[8]
    lines = describe_problems(roster.bad)
    assert lines[0].startswith("row 4 (乙): ") and len(lines) == 6
    # never a full ID in a message
    for line in lines:
        for ident in (A, B, C, bad_checksum):
            assert ident not in line


def test_labels_mask_the_id(tmp_path):
    [row] = read_roster(write_csv(tmp_path, f"班級,座號,姓名,身分證字號,同意\n301,7,王小明,{A},是\n")).rows
    assert row.label == f"王小明 {A[:3]}*****{A[8:]} (row 2, class 301, seat 7)"
    assert A not in row.label and A not in repr(row)


@pytest.mark.parametrize("value", ["是", "Y", "y", "yes", "YES", "同意", "V", "v", "✓", "✔", "TRUE", "true", "1", " 是 ", "Ｙ", True, 1, 1.0])
def test_yes_values(value):
    assert is_yes(value)


@pytest.mark.parametrize("value", ["", None, "否", "N", "no", "不同意", "0", "FALSE", False, 0, 2, "OK", "有", "x", "是的"])
def test_everything_else_is_no(value):
    assert not is_yes(value)


def test_unclear_consent_values_get_a_note(tmp_path):
    roster = read_roster(write_csv(tmp_path, f"姓名,身分證字號,同意\n甲,{A},OK\n乙,{B},否\n丙,{C},\n"))
    assert [r.status for r in roster.rows] == ["no_consent"] * 3
    assert len(roster.notes) == 1 and "'OK' (row 2)" in roster.notes[0]


# -- formats and encodings ---------------------------------------------------------------------


def test_xlsx_typed_cells_and_the_first_sheet_with_a_header(tmp_path):
    book = Workbook()
    first = book.active
    first.title = "說明"
    first.append(["請填寫第二張工作表"])
    second = book.create_sheet("名單")
    second.append(["座號", "姓名", "身分證字號", "同意", "補發"])
    second.append([3, "甲", A, True, False])
    second.append([4.0, "乙", B, 1, "是"])
    path = tmp_path / "r.xlsx"
    book.save(path)
    roster = read_roster(path)
    assert roster.sheet == "名單" and any("used sheet '名單'" in n for n in roster.notes)
    assert [(r.seat, r.consent, r.reissue) for r in roster.rows] == [("3", True, False), ("4", True, True)]
    assert read_roster(path, sheet="名單").rows == roster.rows
    with pytest.raises(RosterInvalid, match="no sheet named"):
        read_roster(path, sheet="Sheet9")


def test_tab_and_semicolon_delimiters_and_utf16(tmp_path):
    tsv = write_csv(tmp_path, f"姓名\t身分證字號\t同意\n甲\t{A}\t是\n", "r.tsv")
    semi = write_csv(tmp_path, f"姓名;身分證字號;同意\n甲;{A};是\n", "s.csv")
    utf16 = write_csv(tmp_path, f"姓名\t身分證字號\t同意\n甲\t{A}\t是\n", "u.txt", "utf-16")
    for path in (tsv, semi, utf16):
        assert read_roster(path).rows[0].id_number == A, path


def test_neither_utf8_nor_big5_is_refused(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes("姓名,身分證字號,同意\n".encode() + b"\xff\xfe\xff,A123456789,\xff\n")
    with pytest.raises(RosterInvalid, match="neither UTF-8 nor Big5"):
        read_roster(path)


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(RosterInvalid, match=r"\.xlsx, \.xls, \.ods or \.csv"):
        read_roster(tmp_path / "roster.pdf")
    with pytest.raises(RosterInvalid, match="does not exist"):
        read_roster(tmp_path / "missing.csv")


def test_cell_text():
    import datetime as dt

    assert cell_text(3.0) == "3" and cell_text(2.5) == "2.5" and cell_text(None) == ""
    assert cell_text(dt.date(2016, 3, 4)) == "2016-03-04"
    assert cell_text(dt.datetime(2016, 3, 4)) == "2016-03-04"
    assert cell_text("  王小明\u3000") == "王小明"
