"""JSON Schema of task configurations, for editors (VS Code's YAML extension and others)."""

from __future__ import annotations

from typing import Any, Dict

from dstack_ray.config.task import TaskConfiguration

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def configuration_schema() -> Dict[str, Any]:
    schema = TaskConfiguration.model_json_schema()
    schema["$schema"] = SCHEMA_DIALECT
    schema["title"] = "dstack task configuration (dstack-ray)"
    return schema
