"""CSV import of clients: rows validated one by one, valid ones COPYed in chunks and upserted at once.

Parsing and validating a chunk, and turning it into COPY data, is CPU work: it runs in a worker thread,
one chunk at a time, so the event loop keeps serving other requests during a big import. The loop only
moves bytes (COPY, the upsert) between chunks.

Memory stays bounded whatever the file's length: the upload is spooled to disk by the multipart parser,
a chunk of rows at a time is held, a phone repeated in the file is found by the database (in the staging
table), and what was written (client id, line, created or updated: the per-client log lines) comes back
from the database in blocks of text that go to a temporary file, read back a block at a time when the
lines are logged after the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import heapq
import io
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import IO, Any

import psycopg
from fastapi import UploadFile
from fastapi.exceptions import RequestValidationError
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession

from shared.domain.clients import normalize_phone, resolve_operator_code, validate_tag, validate_timezone
from shared.domain.errors import DomainValidationError
from shared.logging import batched_lines

COLUMNS = ("phone", "operator_code", "tag", "timezone")
REQUIRED = ("phone", "timezone")
OPTIONAL = frozenset(COLUMNS) - frozenset(REQUIRED)
MAX_REPORTED_ERRORS = 1000

# line, phone, operator code, tag, timezone
Row = tuple[int, str, str, str, str]


class RowError(BaseModel):
    line: int = Field(description="Line of the file, the header being line 1", examples=[7])
    field: str = Field(examples=["phone"])
    message: str = Field(examples=["phone must be 7 followed by 10 digits (7XXXXXXXXXX), got '8900'"])


class ImportReport(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "created": 99_000,
                    "updated": 998,
                    "rejected": 2,
                    "errors": [
                        {"line": 7, "field": "timezone", "message": "unknown timezone 'Mars/Olympus'"},
                        {"line": 9, "field": "phone", "message": "duplicate of line 3"},
                    ],
                }
            ]
        }
    )

    created: int = Field(ge=0, description="New clients")
    updated: int = Field(ge=0, description="Clients whose phone was already in the directory")
    rejected: int = Field(ge=0, description="Invalid rows, none of them written")
    errors: list[RowError] = Field(description=f"Why rows were rejected (the first {MAX_REPORTED_ERRORS})")


class TooManyRows(Exception):
    """The file has more data rows than an import may hold: refused (413) as a whole, nothing written."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the file has more than {limit} rows, the most one import takes")
        self.limit = limit


def _file_error(message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", "file"), "msg": message}])


class _Validator:
    def __init__(self) -> None:
        self.zones: dict[str, str | None] = {}

    def timezone(self, name: str) -> str | None:
        """The problem with a timezone name, or None; zone lookups are cached per distinct name."""
        if name not in self.zones:
            try:
                validate_timezone(name)
                self.zones[name] = None
            except DomainValidationError as exc:
                self.zones[name] = exc.message
        return self.zones[name]

    def row(self, values: dict[str, str], line: int) -> Row | list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        phone = code = tag = ""
        try:
            phone = normalize_phone(values.get("phone", ""))
        except DomainValidationError as exc:
            problems.append((exc.field, exc.message))
        try:
            code = resolve_operator_code(phone, values.get("operator_code") or None)
        except DomainValidationError as exc:
            problems.append((exc.field, exc.message))
        try:
            tag = validate_tag(values.get("tag"))
        except DomainValidationError as exc:
            problems.append((exc.field, exc.message))
        timezone = values.get("timezone", "")
        if (problem := self.timezone(timezone)) is not None:
            problems.append(("timezone", problem))
        if problems:
            return problems
        # A phone repeated in the file is found in the staging table (`_DUPLICATES`): no set of every
        # phone is held here.
        return line, phone, code, tag, timezone


class _Parsed:
    def __init__(self) -> None:
        self.rejected = 0
        self.errors: list[RowError] = []
        self.validator = _Validator()
        # The optional columns the header names: an existing client keeps what the file does not give.
        self.optional: frozenset[str] = frozenset()

    def reject(self, line: int, problems: list[tuple[str, str]]) -> None:
        self.rejected += 1
        for field, message in problems:
            if len(self.errors) < MAX_REPORTED_ERRORS:
                self.errors.append(RowError(line=line, field=field, message=message))


def _chunks(text: io.TextIOBase, parsed: _Parsed, chunk_rows: int, max_rows: int) -> Iterator[list[Row]]:
    reader = csv.reader(text)
    try:
        header = next(reader, None)
        if header is None:
            raise _file_error(
                "the file is empty; the first line must be the header phone,operator_code,tag,timezone"
            )
        names = [h.strip().lower() for h in header]
        missing = [c for c in REQUIRED if c not in names]
        if missing:
            raise _file_error(
                f"the header lacks the column(s) {', '.join(missing)}; got {','.join(names)[:200]}"
            )
        if len(set(names)) != len(names):
            raise _file_error("the header names a column twice")
        wanted = [(i, n) for i, n in enumerate(names) if n in COLUMNS]
        parsed.optional = frozenset(names) & OPTIONAL
        chunk: list[Row] = []
        rows = 0
        for record in reader:
            if not record or record == [""]:
                continue
            rows += 1
            if rows > max_rows:
                raise TooManyRows(max_rows)
            line = reader.line_num
            if len(record) > len(names):
                parsed.reject(line, [("row", f"expected {len(names)} columns, got {len(record)}")])
                continue
            values = {n: record[i].strip() for i, n in wanted if i < len(record)}
            result = parsed.validator.row(values, line)
            if isinstance(result, list):
                parsed.reject(line, result)
                continue
            chunk.append(result)
            if len(chunk) >= chunk_rows:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
    except csv.Error as exc:
        raise _file_error(f"line {reader.line_num}: malformed CSV ({exc})") from None
    except UnicodeDecodeError:
        raise _file_error(f"the file is not UTF-8 text (near line {reader.line_num + 1})") from None


STAGING = (
    "CREATE TEMP TABLE client_import (line integer, phone text, operator_code text, tag text, timezone text)"
    " ON COMMIT DROP",
    "CREATE TEMP TABLE client_import_written (client_id bigint, line integer, created boolean)"
    " ON COMMIT DROP",
)

# Every valid row's phone after its first valid row in the file: those rows are rejected, none written.
# Only run when the upsert found a phone twice (which it refuses), so a file without repeats pays nothing.
DUPLICATES = """
WITH firsts AS (
    SELECT phone, min(line) AS first FROM client_import GROUP BY phone HAVING count(*) > 1
), gone AS (
    DELETE FROM client_import c USING firsts f WHERE c.phone = f.phone AND c.line > f.first
    RETURNING c.line, f.first
)
SELECT line, first, count(*) OVER () FROM gone ORDER BY line LIMIT %(limit)s
"""

# The upsert of one part of the staging table (parts by a hash of the phone, so that a phone repeated in
# the file lands in one part, where the upsert refuses it), what it wrote (id, the row's line, created or
# updated) kept in a staging table for the log lines, and the counts. A part of at most UPSERT_ROWS rows
# a statement keeps each statement well inside the statement timeout, whatever the file's length.
# An existing client gets the file's timezone, and its operator code and tag only when the header names
# them (a file of phones and timezones changes no tag); a new one gets the rules' defaults for those.
UPSERT = """
WITH part AS (
    SELECT line, phone, operator_code, tag, timezone FROM client_import
    WHERE (hashtext(phone) & 2147483647) %% %(parts)s = %(part)s
), up AS (
    INSERT INTO clients (phone, operator_code, tag, timezone)
    SELECT phone, operator_code, tag, timezone FROM part
    ON CONFLICT (phone) WHERE deleted_at IS NULL DO UPDATE
        SET {given}timezone = EXCLUDED.timezone, updated_at = now()
    RETURNING id, phone, (xmax = 0) AS created
), written AS (
    INSERT INTO client_import_written (client_id, line, created)
    SELECT up.id, part.line, up.created FROM up JOIN part USING (phone)
    RETURNING created
)
SELECT count(*) FILTER (WHERE created), count(*) FROM written
"""
UPSERT_ROWS = 100_000

# What was written, as blocks of text lines "client_id line t|f" (about 18 bytes a client), so that a
# million clients cross to Python as a few hundred strings, not a million rows.
WRITTEN_BLOCKS = """
SELECT string_agg(concat_ws(' ', client_id, line, CASE WHEN created THEN 't' ELSE 'f' END), E'\\n')
FROM client_import_written GROUP BY line / CAST(%(rows)s AS integer)
"""


class ImportResult:
    """The report, and what was written (a temporary file) for the per-client log lines.

    After the commit the caller hands it to `log_after_answer`; otherwise it calls `close`."""

    def __init__(self, report: ImportReport, written: IO[bytes]) -> None:
        self.report = report
        self._written = written

    def clients(self) -> Iterator[ImportedClient]:
        """Each written client, read back from the file a block at a time."""
        self._written.seek(0)
        for line in self._written:
            client_id, row, created = line.split()
            yield ImportedClient(int(client_id), int(row), created == b"t")

    def log_clients(self) -> None:
        """One line per client (requirement 12: every operation on a client can be found by its id),
        written a few hundred at a time (`batched_lines`); the file is closed after the last."""
        try:
            with batched_lines():
                for client in self.clients():
                    logger.info(
                        _CREATED if client.created else _UPDATED,
                        client.client_id,
                        client.line,
                        client_id=client.client_id,
                    )
        finally:
            self.close()

    def close(self) -> None:
        self._written.close()


_CREATED = "client {} created by CSV import (line {})"
_UPDATED = "client {} updated by CSV import (line {})"

# The imports whose per-client lines are being written, each a task (kept here until it ends).
_log_writers: set[asyncio.Task[None]] = set()


def log_after_answer(result: ImportResult) -> None:
    """Called after the commit: the per-client lines are written from a worker thread (with the request's
    context: its request id and actor) while the answer goes out, not before it.

    Through a pipe read by a slow reader (honcho under `make run` passes about 10,000 lines a second)
    a big import's lines take longer than the import; the client waits for its commit, not for them
    (docs/benchmarks.md, CSV import). Stopping the API still writes them: its shutdown waits for
    `log_writers_done`."""

    async def write() -> None:
        try:
            await asyncio.to_thread(result.log_clients)
        except Exception:
            logger.exception("writing the CSV import's per-client log lines failed")

    task = asyncio.create_task(write())
    _log_writers.add(task)
    task.add_done_callback(_log_writers.discard)


async def log_writers_done() -> None:
    """Waits until every import's per-client lines are written (tests and the benchmark use it)."""
    while _log_writers:
        await asyncio.gather(*_log_writers)


@dataclass(frozen=True)
class ImportedClient:
    client_id: int
    line: int
    created: bool


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(chunk: list[Row]) -> bytes:
    """A chunk as COPY text-format data (tab-separated, backslash-escaped, UTF-8)."""
    e = _COPY_ESCAPES
    return "".join(
        f"{line}\t{phone.translate(e)}\t{code.translate(e)}\t{tag.translate(e)}\t{zone.translate(e)}\n"
        for line, phone, code, tag, zone in chunk
    ).encode()


def _next_chunk(chunks: Iterator[list[Row]]) -> tuple[int, bytes] | None:
    """In a worker thread: parse and validate the next chunk; its row count and COPY data, or None at the end.

    The generator (csv reader, validator, error report) is only ever advanced by one thread at a time:
    each call is awaited before the next one starts.
    """
    chunk = next(chunks, None)
    return None if chunk is None else (len(chunk), _copy_text(chunk))


@dataclass
class _Written:
    created: int = 0
    written: int = 0
    duplicates: int = 0


async def _copy_rows(cursor: Any, chunks: Iterator[list[Row]]) -> int:
    """COPY every valid row into the staging table; the next chunk is parsed in a thread meanwhile."""
    copied = 0
    parsing = asyncio.ensure_future(asyncio.to_thread(_next_chunk, chunks))
    try:
        while (batch := await parsing) is not None:
            parsing = asyncio.ensure_future(asyncio.to_thread(_next_chunk, chunks))
            rows, data = batch
            async with cursor.copy("COPY client_import FROM STDIN") as copy:
                await copy.write(data)
            copied += rows
    finally:
        # On an error, the thread must be done with the file before it is let go.
        await asyncio.wait({parsing})
        if not parsing.cancelled():
            parsing.exception()
    return copied


async def _upsert_parts(cursor: Any, copied: int, optional: frozenset[str]) -> tuple[int, int]:
    """Created and written (created or updated) clients, the staging table upserted a part at a time;
    `optional`: the optional columns the file gives, written over an existing client's."""
    given = "".join(f"{column} = EXCLUDED.{column}, " for column in sorted(optional & OPTIONAL))
    upsert = UPSERT.replace("{given}", given)
    parts = -(-copied // UPSERT_ROWS)
    created = written = 0
    for part in range(parts):
        await cursor.execute(upsert, {"parts": parts, "part": part})
        part_created, part_written = await cursor.fetchone()
        created += part_created
        written += part_written
    return created, written


async def _upsert(
    cursor: Any, copied: int, optional: frozenset[str], duplicate_errors: list[RowError]
) -> _Written:
    """The upsert of the staging table. It refuses a phone that comes twice; only then are the repeats
    taken out (each reported as an error, the first MAX_REPORTED_ERRORS by line) and the upsert run again."""
    result = _Written()
    await cursor.execute("SAVEPOINT client_import_upsert")
    try:
        result.created, result.written = await _upsert_parts(cursor, copied, optional)
    except psycopg.errors.CardinalityViolation:
        await cursor.execute("ROLLBACK TO SAVEPOINT client_import_upsert")
        await cursor.execute(DUPLICATES, {"limit": MAX_REPORTED_ERRORS})
        for line, first, total in await cursor.fetchall():
            result.duplicates = total
            duplicate_errors.append(RowError(line=line, field="phone", message=f"duplicate of line {first}"))
        result.created, result.written = await _upsert_parts(cursor, copied - result.duplicates, optional)
    await cursor.execute("RELEASE SAVEPOINT client_import_upsert")
    return result


async def import_clients_csv(
    session: AsyncSession, upload: UploadFile, *, chunk_rows: int, max_rows: int
) -> ImportResult:
    """Validate and upsert every row in the session's transaction. The caller commits, then hands the
    result to `log_after_answer`, or calls its `close` when it does not commit."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    pg: Any = raw.driver_connection
    parsed = _Parsed()
    written = _Written()
    duplicate_errors: list[RowError] = []
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(tempfile.TemporaryFile())
        # The upload is already spooled to a temporary file by the multipart parser; read it line by line.
        text = io.TextIOWrapper(upload.file, encoding="utf-8-sig", newline="")
        stack.callback(text.detach)
        async with pg.cursor() as cursor:
            for statement in STAGING:
                await cursor.execute(statement)
            if copied := await _copy_rows(cursor, _chunks(text, parsed, chunk_rows, max_rows)):
                written = await _upsert(cursor, copied, parsed.optional, duplicate_errors)
                # Streamed a row (a block of text) at a time: never the whole result at once.
                async for (block,) in cursor.stream(WRITTEN_BLOCKS, {"rows": chunk_rows}):
                    out.write(block.encode() + b"\n")
            await cursor.execute("DROP TABLE client_import, client_import_written")
        # Success: the file goes to the result (the caller closes it); the upload is let go as before.
        stack.pop_all()
        text.detach()
    errors = parsed.errors
    if duplicate_errors:
        merged = heapq.merge(errors, duplicate_errors, key=lambda e: e.line)
        errors = list(islice(merged, MAX_REPORTED_ERRORS))
    report = ImportReport(
        created=written.created,
        updated=written.written - written.created,
        rejected=parsed.rejected + written.duplicates,
        errors=errors,
    )
    return ImportResult(report, out)
