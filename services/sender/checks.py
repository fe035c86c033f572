"""Whether a claimed message may be sent now: the pure check made before every call."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from shared.domain.filters import ClientFilter
from shared.domain.statuses import MailingStatus, Reason, Route
from shared.domain.windows import DailyWindow, is_open, next_opening

EVERY_CLIENT = ClientFilter()


@dataclass(frozen=True)
class MailingInfo:
    id: int
    text: str
    status: str
    end_at: datetime
    window: DailyWindow | None
    deleted: bool = False
    # The filter as it is now: a client it no longer matches is not sent to, whatever its message's state.
    filter: ClientFilter = EVERY_CLIENT


class Claim(NamedTuple):
    """A message this sender holds under a lease (one per message handled: a tuple is the cheapest)."""

    message_id: int
    mailing_id: int
    client_id: int
    attempts: int
    phone: str
    timezone: str
    client_deleted: bool = False
    tag: str = ""
    operator_code: str = ""
    # The claim's token: the status write of this message applies only while it still holds it.
    token: int = 0


@dataclass(frozen=True)
class Verdict:
    action: Route
    reason: str = ""
    not_before: datetime | None = None


SEND = Verdict(Route.SEND)


def check_sendable(claim: Claim, mailing: MailingInfo, now: datetime) -> Verdict:
    if mailing.deleted or mailing.status == MailingStatus.CANCELLED:
        return Verdict(Route.CANCEL, Reason.MAILING_CANCELLED)
    if claim.client_deleted:
        return Verdict(Route.CANCEL, Reason.CLIENT_DELETED)
    if not mailing.filter.matches(claim.tag, claim.operator_code):
        return Verdict(Route.CANCEL, Reason.CLIENT_NO_LONGER_MATCHES)
    if now >= mailing.end_at or mailing.status == MailingStatus.FINISHED:
        return Verdict(Route.EXPIRE, Reason.MAILING_ENDED)
    if mailing.status != MailingStatus.RUNNING:
        # Paused (or re-scheduled): the scheduler hands it out again once the mailing runs.
        return Verdict(Route.WAIT, f"mailing {mailing.status}", not_before=now)
    if mailing.window is not None and not is_open(mailing.window, claim.timezone, now):
        opening = next_opening(mailing.window, claim.timezone, now)
        if opening >= mailing.end_at:
            return Verdict(Route.EXPIRE, Reason.NO_OPENING)
        return Verdict(Route.WAIT, "outside the client's window", not_before=opening)
    return SEND
