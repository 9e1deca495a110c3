"""The KV value models of the Manticore controllers (one module per KV prefix as they land).

``KV_MODELS`` maps a schema name to its pydantic model; ``make schemas`` publishes each as
``crds-equivalent-schemas/<name>.schema.json``.
"""

from __future__ import annotations

from pydantic import BaseModel

KV_MODELS: dict[str, type[BaseModel]] = {}
