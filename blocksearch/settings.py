"""Stage settings (DistillConfig, EvalConfig) as plain dicts: stored in the study, read back strictly."""

from dataclasses import asdict

from blocksearch.errors import BlocksearchError


class Settings:
    """Mixin for frozen settings dataclasses: ``to_dict`` and a ``from_dict`` that names unknown keys."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise BlocksearchError(f"unknown {cls.__name__} settings {sorted(unknown)}; "
                                   f"allowed: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)
