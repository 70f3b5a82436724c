"""Base model shared by every configuration model."""

from pydantic import BaseModel, ConfigDict


class CoreModel(BaseModel):
    """Unknown keys are rejected at every level; YAML numbers are accepted where text is expected."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
