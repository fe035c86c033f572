from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, NamedTuple, TypedDict

# Enough for a soak of 50,000 clients through heavy faults; about 100 bytes a record.
REQUEST_LOG_SIZE: Final = 500_000
# The client hung up before the stand-in chose an answer (during the latency it adds).
ABANDONED: Final = "abandoned"


class AcceptedRecord(TypedDict):
    msg_id: int
    phone: int
    text: str
    received_at: str


class RequestRecord(TypedDict):
    msg_id: int | None
    received_at: str
    answered_at: str
    result: str


class Stats(TypedDict):
    requests: int
    accepted: int
    distinct_accepted: int
    duplicates: int


class _Accepted(NamedTuple):
    # Tuples with a raw timestamp keep millions of records small and the hot path cheap.
    msg_id: int
    phone: int
    text: str
    received_at: float


class _Request(NamedTuple):
    msg_id: int | None
    received_at: float
    answered_at: float
    result: str


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def _msg_id(raw: str) -> int | None:
    try:
        return int(raw)
    except ValueError:
        return None


@dataclass
class Recorder:
    """What the stand-in received, so tests and benchmarks can count deliveries and duplicates."""

    requests: int = 0
    request_log_size: int = REQUEST_LOG_SIZE
    _accepted: list[_Accepted] = field(default_factory=list)
    _per_msg: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._requests: deque[_Request] = deque(maxlen=self.request_log_size)

    def record_request(self, msg_id: str, received_at: float, answered_at: float, result: str | None) -> None:
        """Every send request with when it came, when it was answered (or the client hung up) and how."""
        self._requests.append(_Request(_msg_id(msg_id), received_at, answered_at, result or ABANDONED))

    def requests_seen(self, msg_id: str | None = None) -> list[RequestRecord]:
        wanted = None if msg_id is None else _msg_id(msg_id)
        return [
            {
                "msg_id": r.msg_id,
                "received_at": _iso(r.received_at),
                "answered_at": _iso(r.answered_at),
                "result": r.result,
            }
            for r in self._requests
            if msg_id is None or r.msg_id == wanted
        ]

    def record_accepted(self, msg_id: int, phone: int, text: str, received_at: float) -> None:
        self._accepted.append(_Accepted(msg_id, phone, text, received_at))
        per_msg = self._per_msg
        per_msg[msg_id] = per_msg.get(msg_id, 0) + 1

    def accepted_count(self, msg_id: int) -> int:
        return self._per_msg.get(msg_id, 0)

    def stats(self) -> Stats:
        accepted = len(self._accepted)
        distinct = len(self._per_msg)
        return {
            "requests": self.requests,
            "accepted": accepted,
            "distinct_accepted": distinct,
            "duplicates": accepted - distinct,
        }

    def accepted(self, msg_id: int | None = None) -> list[AcceptedRecord]:
        return [
            {
                "msg_id": r.msg_id,
                "phone": r.phone,
                "text": r.text,
                "received_at": _iso(r.received_at),
            }
            for r in self._accepted
            if msg_id is None or r.msg_id == msg_id
        ]

    def reset(self) -> None:
        self.requests = 0
        self._accepted = []
        self._per_msg = {}
        self._requests.clear()
