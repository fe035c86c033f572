from dataclasses import dataclass


@dataclass(frozen=True)
class ClientFilter:
    tags: frozenset[str] = frozenset()
    operator_codes: frozenset[str] = frozenset()

    @property
    def is_empty(self) -> bool:
        return not self.tags and not self.operator_codes

    def matches(self, tag: str, operator_code: str) -> bool:
        if self.tags and tag not in self.tags:
            return False
        return not self.operator_codes or operator_code in self.operator_codes
