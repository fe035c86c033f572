from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple, TypedDict


class AcceptedRecord(TypedDict):
    msg_id: int
    phone: int
    text: str
    received_at: str


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


@dataclass
class Recorder:
    """What the stand-in received, so tests and benchmarks can count deliveries and duplicates."""

    requests: int = 0
    _accepted: list[_Accepted] = field(default_factory=list)
    _per_msg: dict[int, int] = field(default_factory=dict)

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
                "received_at": datetime.fromtimestamp(r.received_at, UTC).isoformat(),
            }
            for r in self._accepted
            if msg_id is None or r.msg_id == msg_id
        ]

    def reset(self) -> None:
        self.requests = 0
        self._accepted = []
        self._per_msg = {}
