"""CSV import of clients: rows validated one by one, valid ones COPYed in chunks and upserted at once.

Parsing and validating a chunk, and turning it into COPY data, is CPU work: it runs in a worker thread,
one chunk at a time, so the event loop keeps serving other requests during a big import. The loop only
moves bytes (COPY, the upsert) between chunks.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession

from shared.domain.clients import normalize_phone, resolve_operator_code, validate_tag, validate_timezone
from shared.domain.errors import DomainValidationError

COLUMNS = ("phone", "operator_code", "tag", "timezone")
REQUIRED = ("phone", "timezone")
MAX_REPORTED_ERRORS = 1000

Row = tuple[str, str, str, str]


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
        self.seen: dict[str, int] = {}
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
        if not problems and phone in self.seen:
            problems.append(("phone", f"duplicate of line {self.seen[phone]}"))
        if problems:
            return problems
        self.seen[phone] = line
        return phone, code, tag, timezone


class _Parsed:
    def __init__(self) -> None:
        self.rejected = 0
        self.errors: list[RowError] = []
        self.validator = _Validator()

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


UPSERT = """
INSERT INTO clients (phone, operator_code, tag, timezone)
SELECT phone, operator_code, tag, timezone FROM client_import
ON CONFLICT (phone) WHERE deleted_at IS NULL DO UPDATE
    SET operator_code = EXCLUDED.operator_code, tag = EXCLUDED.tag,
        timezone = EXCLUDED.timezone, updated_at = now()
RETURNING id, phone, (xmax = 0) AS inserted
"""


@dataclass(frozen=True)
class ImportedClient:
    client_id: int
    line: int
    created: bool


@dataclass(frozen=True)
class ImportResult:
    report: ImportReport
    clients: list[ImportedClient]


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(chunk: list[Row]) -> bytes:
    """A chunk as COPY text-format data (tab-separated, backslash-escaped, UTF-8)."""
    return "".join("\t".join(v.translate(_COPY_ESCAPES) for v in row) + "\n" for row in chunk).encode()


def _next_chunk(chunks: Iterator[list[Row]]) -> tuple[int, bytes] | None:
    """In a worker thread: parse and validate the next chunk; its row count and COPY data, or None at the end.

    The generator (csv reader, validator, error report) is only ever advanced by one thread at a time:
    each call is awaited before the next one starts.
    """
    chunk = next(chunks, None)
    return None if chunk is None else (len(chunk), _copy_text(chunk))


async def import_clients_csv(
    session: AsyncSession, upload: UploadFile, *, chunk_rows: int, max_rows: int
) -> ImportResult:
    """Validate and upsert every row in the session's transaction; the caller commits."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    pg: Any = raw.driver_connection
    parsed = _Parsed()
    copied = 0
    written: list[ImportedClient] = []
    # The upload is already spooled to a temporary file by the multipart parser; read it line by line.
    text = io.TextIOWrapper(upload.file, encoding="utf-8-sig", newline="")
    try:
        async with pg.cursor() as cursor:
            await cursor.execute(
                "CREATE TEMP TABLE client_import (phone text, operator_code text, tag text, timezone text)"
                " ON COMMIT DROP"
            )
            chunks = _chunks(text, parsed, chunk_rows, max_rows)
            # The next chunk is parsed in the thread while the current one is COPYed.
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
            if copied:
                await cursor.execute(UPSERT)
                lines = parsed.validator.seen
                # Turning the returned rows into objects is CPU work too: a chunk at a time, yielding between.
                while records := await cursor.fetchmany(chunk_rows):
                    written.extend(ImportedClient(i, lines[phone], new) for i, phone, new in records)
                    await asyncio.sleep(0)
            await cursor.execute("DROP TABLE client_import")
    finally:
        text.detach()
    created = sum(c.created for c in written)
    report = ImportReport(
        created=created, updated=len(written) - created, rejected=parsed.rejected, errors=parsed.errors
    )
    return ImportResult(report, written)
