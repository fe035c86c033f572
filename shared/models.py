from __future__ import annotations

from datetime import date, datetime, time
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Text,
    Time,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.domain.statuses import FINAL_SQL, IN_FLIGHT_SQL, MailingStatus, MessageStatus, ReportStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Client(Base):
    __tablename__ = "clients"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    phone: Mapped[str] = mapped_column(String(11), nullable=False)
    operator_code: Mapped[str] = mapped_column(String(3), nullable=False)
    tag: Mapped[str] = mapped_column(String(64), nullable=False, server_default="")
    timezone: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    # Clients are deleted softly so that messages already sent keep their history.
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(r"phone ~ '^7[0-9]{10}$'", name="phone_format"),
        CheckConstraint(r"operator_code ~ '^[0-9]{3}$'", name="operator_code_format"),
        Index("uq_clients_phone_live", "phone", unique=True, postgresql_where=text("deleted_at IS NULL")),
        Index("ix_clients_operator_code", "operator_code"),
        Index("ix_clients_tag", "tag"),
        # The scheduler picks up clients added or changed while a mailing runs by this column.
        Index("ix_clients_updated_at", "updated_at"),
        # The clients a mailing filter matches, counted from this index alone (migration 0008).
        Index(
            "ix_clients_live_tag_operator_code",
            "tag",
            "operator_code",
            postgresql_where=text("deleted_at IS NULL"),
        ),
        # Every client's id by phone prefix, from the index alone (the messages search, migration 0008).
        Index("ix_clients_phone_id", "phone", postgresql_include=["id"]),
    )


class Mailing(Base):
    __tablename__ = "mailings"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    start_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    end_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    filter_tags: Mapped[list[str]] = mapped_column(ARRAY(String(64)), nullable=False, server_default="{}")
    filter_operator_codes: Mapped[list[str]] = mapped_column(
        ARRAY(String(3)), nullable=False, server_default="{}"
    )
    window_start: Mapped[time | None] = mapped_column(Time)
    window_end: Mapped[time | None] = mapped_column(Time)
    status: Mapped[str] = mapped_column(
        String(16), nullable=False, server_default=MailingStatus.SCHEDULED.value
    )
    # Set when the scheduler has expanded the mailing into messages for its current filter.
    expanded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Hash of the filter, window and period the last expansion used; a change means re-expanding.
    expansion_signature: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("end_at > start_at", name="end_after_start"),
        CheckConstraint("(window_start IS NULL) = (window_end IS NULL)", name="window_complete"),
        CheckConstraint(f"status IN {MailingStatus.sql_list()}", name="status_known"),
        Index("ix_mailings_status_start", "status", "start_at"),
    )


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # Both name an existing row, as foreign keys would have them; triggers check that a statement at a
    # time (migration 0011), which costs the scheduler's bulk inserts half of what the keys did.
    mailing_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    client_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[str] = mapped_column(
        String(16), nullable=False, server_default=MessageStatus.PENDING.value
    )
    # Earliest instant the message may be sent: the mailing's start moved into the client's window.
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    # A sender holds a message while its request is in flight; a redelivered copy skips it.
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The token of the claim holding the message: writes and releases by any other holder match nothing.
    claim_token: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint(
            f"status IN {MessageStatus.sql_list()}",
            name="status_known",
        ),
        # What the recovery sweep's condition starts from (migration 0014).
        CheckConstraint(
            f"status NOT IN {IN_FLIGHT_SQL} OR queued_at IS NOT NULL", name="in_flight_queued_at"
        ),
        Index("uq_messages_mailing_id_client_id", "mailing_id", "client_id", unique=True),
        Index("ix_messages_mailing_id_status", "mailing_id", "status"),
        Index("ix_messages_client_id", "client_id"),
        Index(
            "ix_messages_due", "not_before", postgresql_where=text(f"status = {MessageStatus.PENDING.sql}")
        ),
        Index(
            "ix_messages_in_flight",
            "queued_at",
            postgresql_where=text(f"status IN {IN_FLIGHT_SQL}"),
        ),
        # Room on each page for the sender's lease, a HOT update (migration 0010).
        {"postgresql_with": {"fillfactor": 60}},
    )


class MailingStatusCount(Base):
    """How many of a mailing's messages are in a status, in one slot: kept by statement-level triggers on
    `messages` (migration 0007), each writer adding to the slot of its backend (pid modulo the slots) so
    concurrent writers of one mailing seldom wait on the same row. Sum the slots to read a count; one
    slot's count may be negative."""

    __tablename__ = "mailing_status_counts"

    mailing_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    slot: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)

    __table_args__ = (
        PrimaryKeyConstraint("mailing_id", "status", "slot"),
        {"postgresql_with": {"fillfactor": 50}},
    )


class OutboxEvent(Base):
    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    routing_key: Mapped[str] = mapped_column(String(64), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = _now()


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    prefix: Mapped[str] = mapped_column(String(12), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False, server_default="operator")
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (CheckConstraint("role IN ('admin', 'operator', 'viewer')", name="role_known"),)


class SenderRateBucket(Base):
    """The token bucket every sender process takes from when the external API is rate-limited."""

    __tablename__ = "sender_rate_buckets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float, nullable=False)
    refreshed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class SenderHealth(Base):
    """What each sender last reported of itself (every few seconds): the admin dashboard's delivery path."""

    __tablename__ = "sender_health"

    instance: Mapped[str] = mapped_column(String(200), primary_key=True)
    # 0 closed, 1 half-open, 2 open (services.sender.breaker.BreakerState).
    circuit_state: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    calls_in_flight: Mapped[int] = mapped_column(Integer, nullable=False)
    fenced: Mapped[bool] = mapped_column(Boolean, nullable=False)
    retry_queued: Mapped[int | None] = mapped_column(Integer)
    parked_queued: Mapped[int | None] = mapped_column(Integer)
    reported_at: Mapped[datetime] = _now()


class AdminSessionEnded(Base):
    """An admin UI session ended by its sign-out. The session is a signed cookie: a copy of it would
    otherwise stay valid until it expires."""

    __tablename__ = "admin_sessions_ended"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    ended_at: Mapped[datetime] = _now()
    # When the session would have expired anyway: the row is not needed after it.
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)


class SendProgress(Base):
    """How far a send queue has been consumed: the entry time of the newest message claimed from it."""

    __tablename__ = "send_progress"

    queue: Mapped[str] = mapped_column(String(200), primary_key=True)
    consumed_through: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = _now()


class ReportOutcome(Base):
    """A final status as the reporter heard it (message.finalized); the key drops re-delivered events."""

    __tablename__ = "report_outcomes"

    message_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    mailing_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    client_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    recorded_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint(f"status IN {FINAL_SQL}", name="status_final"),
        Index("ix_report_outcomes_occurred_at", "occurred_at"),
    )


class ReportOutcomeMinute(Base):
    """How many outcomes of a mailing in a final status the reporter recorded in one minute (by
    `occurred_at`): kept by statement-level triggers on `report_outcomes` (migration 0008). The charts and
    the daily report sum these rows instead of counting outcomes."""

    __tablename__ = "report_outcome_minutes"

    mailing_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    minute: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)

    __table_args__ = (
        PrimaryKeyConstraint("mailing_id", "status", "minute"),
        Index("ix_report_outcome_minutes_minute", "minute"),
    )


class ReportRun(Base):
    """The daily report of one local calendar day: sending until the SMTP server took it, then sent."""

    __tablename__ = "report_runs"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    mail_message_id: Mapped[str | None] = mapped_column(String(255))
    # The reporter holding the day while it sends, until the lease runs out.
    holder: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (CheckConstraint(f"status IN {ReportStatus.sql_list()}", name="status_known"),)
