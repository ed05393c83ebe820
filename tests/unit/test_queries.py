"""The named-query files and the DDL splitter: the whole SQL contract is read from them."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from supervisor.store.queries import load_queries, parse_queries, parse_statements

# Every statement the shared SqlStore runs by name, so both backends must define it.
SHARED = {
    "enqueue",
    "progress",
    "complete",
    "complete_many",
    "fail",
    "requeue",
    "refund",
    "renew_leases",
    "rescue_lost",
    "rescue_requeue",
    "expire_overdue",
    "status_of",
    "cancel",
    "retry",
    "prune",
    "counts",
    "get",
    "ping",
}
BACKEND_FILES = ["sqlite.sql", "mysql.sql"]


# --- parse_queries -------------------------------------------------------------------------


def test_each_named_block_becomes_one_query() -> None:
    text = """
-- name: first
SELECT 1

-- name: second
UPDATE t
SET a = 1
WHERE b = 2
"""
    assert parse_queries(text) == {
        "first": "SELECT 1",
        "second": "UPDATE t\nSET a = 1\nWHERE b = 2",
    }


def test_text_before_the_first_name_is_a_header_and_ignored() -> None:
    text = "-- What this file is.\n-- More words.\n\n-- name: only\nSELECT 1\n"
    assert parse_queries(text) == {"only": "SELECT 1"}


def test_a_trailing_semicolon_and_surrounding_blank_space_are_dropped() -> None:
    assert parse_queries("-- name: q\n\n   SELECT 1;  \n\n") == {"q": "SELECT 1"}


def test_comments_inside_a_block_stay_with_its_query() -> None:
    text = "-- name: q\n-- why this is written so\nSELECT 1\n"
    assert parse_queries(text) == {"q": "-- why this is written so\nSELECT 1"}


@pytest.mark.parametrize("marker", ["-- name: q", "--name:q", "--  name:   q  "])
def test_the_name_marker_tolerates_spacing(marker: str) -> None:
    assert parse_queries(f"{marker}\nSELECT 1\n") == {"q": "SELECT 1"}


def test_a_name_defined_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="'q' is defined twice"):
        parse_queries("-- name: q\nSELECT 1\n-- name: q\nSELECT 2\n")


def test_text_without_names_has_no_queries() -> None:
    assert parse_queries("-- just a comment\nSELECT 1;\n") == {}


# --- the backend files ---------------------------------------------------------------------


@pytest.mark.parametrize("filename", BACKEND_FILES)
def test_each_backend_defines_every_shared_query(filename: str) -> None:
    assert set(load_queries(filename)) >= SHARED


def test_sqlite_defines_its_one_statement_claim() -> None:
    assert "claim_batch" in load_queries("sqlite.sql")


def test_mysql_defines_its_locking_claim_and_session_settings() -> None:
    names = set(load_queries("mysql.sql"))
    assert {"claim_select", "claim_update", "session_read_committed", "session_lock_wait"} <= names
    assert "SKIP LOCKED" in load_queries("mysql.sql")["claim_select"]


@pytest.mark.parametrize("filename", BACKEND_FILES)
def test_every_query_is_one_non_empty_statement(filename: str) -> None:
    for name, query in load_queries(filename).items():
        code = "\n".join(ln for ln in query.splitlines() if not ln.lstrip().startswith("--"))
        assert code.strip(), f"{filename}: {name} is empty"
        outside_strings = re.sub(r"'[^']*'", "''", code)
        assert ";" not in outside_strings, f"{filename}: {name} holds more than one statement"


@pytest.mark.parametrize("filename", BACKEND_FILES)
def test_fenced_writes_match_owner_status_and_attempt(filename: str) -> None:
    """The fence is in the SQL of every single-attempt write, not left to the caller."""
    queries = load_queries(filename)
    for name in ("progress", "complete", "fail", "requeue", "refund"):
        query = queries[name]
        for column in ("status = 'running'", "claimed_by =", "attempts ="):
            assert column in query, f"{filename}: {name} lacks {column}"


def test_load_queries_reads_each_file_once() -> None:
    assert load_queries("sqlite.sql") is load_queries("sqlite.sql")


# --- parse_statements ----------------------------------------------------------------------


def test_statements_are_split_on_their_semicolons() -> None:
    script = "CREATE TABLE a (x INT);\nCREATE INDEX i ON a (x);\n"
    assert parse_statements(script) == ["CREATE TABLE a (x INT)", "CREATE INDEX i ON a (x)"]


def test_comment_lines_are_dropped_even_when_they_hold_semicolons() -> None:
    script = "-- a; b; c\nCREATE TABLE a (\n    -- the key; unique\n    x INT\n);\n"
    assert parse_statements(script) == ["CREATE TABLE a (\n    x INT\n)"]


def test_a_last_statement_without_semicolon_is_kept() -> None:
    assert parse_statements("SELECT 1;\nSELECT 2\n") == ["SELECT 1", "SELECT 2"]


def test_blank_and_comment_only_scripts_have_no_statements() -> None:
    assert parse_statements("\n  \n-- nothing here;\n;\n") == []


def test_the_hand_applied_mysql_schema_is_idempotent() -> None:
    """MySQL 8 has no CREATE INDEX IF NOT EXISTS: indexes live inside CREATE TABLE IF NOT EXISTS,
    and the versions are recorded with INSERT IGNORE, so running the file again changes nothing."""
    text = resources.files("supervisor.store").joinpath("schema.mysql.sql").read_text()
    statements = parse_statements(text)
    assert all(s.startswith(("CREATE TABLE IF NOT EXISTS", "INSERT IGNORE")) for s in statements)
    assert "KEY tasks_claim (status, priority, id" in statements[0]
