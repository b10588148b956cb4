"""The spreadsheet cell rule (shared/core/spreadsheet.py): text that would start a formula opens as text,
numbers stay numbers, and every text cell is quoted."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from shared.core.spreadsheet import cell, neutralise, write_csv


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1+1", "@SUM(A1)", "\t=1", "\r=1", "-5"])
def test_text_that_a_spreadsheet_would_evaluate_gets_a_leading_quote(text):
    assert neutralise(text) == "'" + text and cell(text) == "'" + text


@pytest.mark.parametrize("text", ["", "auto", "1+1", " =1", "a=b", "'=1", "21.5"])
def test_other_text_is_left_as_it_is(text):
    assert neutralise(text) == text


def test_numbers_stay_numbers_and_other_values_have_one_text_form():
    assert cell(-3.5) == -3.5 and cell(-7) == -7 and cell(Decimal("-1.25")) == Decimal("-1.25")
    assert (cell(None), cell(True), cell(False)) == ("", "true", "false")
    assert cell(datetime(2026, 12, 8, 1, 2, 3, tzinfo=UTC)) == "2026-12-08T01:02:03+00:00"


def test_write_csv_quotes_text_and_leaves_numbers_bare():
    out = io.StringIO(newline="")
    assert write_csv(out, ["metric", "value"], [("=1;=2", -1.5), ("temp", 21)], delimiter=";") == 2
    assert out.getvalue() == '"metric";"value"\r\n"\'=1;=2";-1.5\r\n"temp";21\r\n'
    assert list(csv.reader(io.StringIO(out.getvalue(), newline=""), delimiter=";"))[1] == ["'=1;=2", "-1.5"]
