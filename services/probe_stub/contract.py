"""The sending contract of the external API, checked by hand: it runs on every request of a benchmark."""

import json
import re
from typing import NamedTuple

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
PHONE_MIN = 70_000_000_000
PHONE_MAX = 79_999_999_999

_INTEGER = re.compile(r"-?[0-9]{1,19}")
_decode_json = json.JSONDecoder().decode


class SendRequest(NamedTuple):
    msg_id: int
    phone: int
    text: str


class InvalidSendRequest(ValueError):
    pass


def _int64(value: object) -> int | None:
    # bool is a subclass of int, but `true` is not a message id.
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:
        return value
    return None


def _json(body: bytes) -> object:
    # json.loads guesses the encoding of bytes first, which costs more than decoding a short body;
    # anything but plain UTF-8 (a BOM, UTF-16) takes that path still.
    try:
        return _decode_json(body.decode())
    except ValueError:
        return json.loads(body)


def parse_send_request(path_msg_id: str, body: bytes) -> SendRequest:
    if _INTEGER.fullmatch(path_msg_id) is None or _int64(int(path_msg_id)) is None:
        raise InvalidSendRequest(f"msgId in the path must be an int64, got {path_msg_id!r}")
    msg_id = int(path_msg_id)
    try:
        payload = _json(body)
    except (ValueError, RecursionError):
        raise InvalidSendRequest("body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidSendRequest("body must be a JSON object")
    for name in ("id", "phone", "text"):
        if name not in payload:
            raise InvalidSendRequest(f"{name} is required")
    body_id = _int64(payload["id"])
    if body_id is None:
        raise InvalidSendRequest("id must be an int64 integer")
    if body_id != msg_id:
        raise InvalidSendRequest(f"id {body_id} does not match msgId {msg_id} in the path")
    phone = payload["phone"]
    if type(phone) is not int or not PHONE_MIN <= phone <= PHONE_MAX:
        raise InvalidSendRequest("phone must be an 11-digit integer starting with 7")
    text = payload["text"]
    if not isinstance(text, str):
        raise InvalidSendRequest("text must be a string")
    return SendRequest(msg_id, phone, text)
