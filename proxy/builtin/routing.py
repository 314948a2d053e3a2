"""YAML routing: the first rule whose `model` glob matches wins.

Each target of the rule becomes one `Target` (a list of targets is the fallback order);
`{model}` in a target's model is replaced by the client's model name.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from ..hookspecs import hookimpl
from ..types import Call, Target


@hookimpl(trylast=True)
def route(call: Call) -> list[Target] | None:
    config = call.config
    model = call.model or ""
    for rule in config.routes:
        if fnmatchcase(model, rule.model):
            return [
                Target(
                    provider=config.providers[spec.provider],
                    model=rule.upstream_model(spec, model),
                    route=rule,
                    guardrail=rule.guardrail,
                    options=spec.options,
                    weight=spec.weight,
                )
                for spec in rule.targets
            ]
    return None
