"""The terminal and Markdown tables of list, plan, compare and the GPU smoke check."""
import math

import pandas as pd

from harness.text_table import cell, markdown_table, text_table


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
