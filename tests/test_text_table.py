"""The terminal and Markdown tables of list, plan, compare and the GPU smoke check."""
import math

import pandas as pd

from harness.text_table import cell, markdown_table, readable, text_table


def test_missing_values_are_dashes_and_present_ones_formatted():
    assert [cell(v, ".1f") for v in (None, math.nan, pd.NA, 2.25, 0.0)] == ["-", "-", "-", "2.2", "0.0"]
    assert cell(12345, ",") == "12,345" and cell("text") == "text"


def test_columns_fit_their_widest_cell_and_numbers_align_right():
    lines = text_table(["name", "n"], [["a", "1"], ["longer", "100"]], right={1})
    assert lines == ["name      n", "------  ---", "a         1", "longer  100"]
    assert text_table(["only"], []) == ["only", "----"]


def test_markdown_cells_cannot_split_on_a_pipe():
    lines = markdown_table(["case", "note"], [["a", "x|y"]])
    assert lines == ["| case | note |", "|---|---|", "| a | x\\|y |"]


def test_measured_numbers_keep_about_three_significant_digits():
    assert [readable(v) for v in (12345.6, -123.45, 12.345, 0.012345)] == ["12,346", "-123.5", "12.35", "0.0123"]
