"""Validate a custom resource as the Kubernetes API server would, without one (for the tests).

A CustomResourceDefinition carries, per version, an OpenAPI v3 schema (a structural schema) and
Kubernetes' extensions to it. ``validate(crd, resource)`` checks a resource against it:

* the schema itself, with ``jsonschema`` after ``to_json_schema`` turned the extensions into
  JSON Schema: ``nullable``, ``x-kubernetes-int-or-string`` (an integer or a string),
  ``x-kubernetes-preserve-unknown-fields`` and ``x-kubernetes-embedded-resource`` (unknown
  fields kept), and every other object closed to unknown fields, as ``kubectl apply`` rejects
  them (its field validation is ``Strict`` by default);
* ``x-kubernetes-list-type`` ``set`` and ``map``: no two items alike, no two keys alike;
* the schema's ``default`` values filled in first, as the API server defaults before it
  validates (``apply_defaults``);
* the ``x-kubernetes-validations`` rules (CEL), evaluated with ``cel-python`` on the defaulted
  resource at the place each rule sits (``self``). A rule that needs what cel-python lacks
  (Kubernetes' CEL libraries: quantities, URLs, ``format``...) or a transition rule
  (``oldSelf``, checked only on updates) is not run: ``CelReport.not_run`` lists it with why,
  so a test can say how many ran.

Pure apart from reading the CRD file; used by tests/test_kubernetes_manifests.py.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml


@dataclass(frozen=True)
class CRD:
    """One served version of a CustomResourceDefinition."""

    group: str
    kind: str
    version: str
    schema: dict[str, Any]  # the version's openAPIV3Schema, as written
    path: Path

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


@dataclass
class CelReport:
    """What the CEL rules said: the failures (path, message), the rules run and those not run."""

    failures: list[tuple[str, str]] = field(default_factory=list)
    run: int = 0
    not_run: list[tuple[str, str, str]] = field(default_factory=list)  # (path, rule, why)


def load_crds(path: Path) -> dict[str, CRD]:
    """Every served version of the CRD(s) in ``path``, by apiVersion/kind."""
    found: dict[str, CRD] = {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are large
    for doc in yaml.load_all(path.read_text(), Loader=loader):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        for version in spec["versions"]:
            if not version.get("served", False):
                continue
            crd = CRD(spec["group"], spec["names"]["kind"], version["name"],
                      version["schema"]["openAPIV3Schema"], path)
            found[f"{crd.api_version}/{crd.kind}"] = crd
    if not found:
        raise ValueError(f"{path}: no served CustomResourceDefinition version")
    return found


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """The structural schema ``node`` as plain JSON Schema (see the module docstring)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "default", "description",
                                                      "format", "example"):
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_json_schema(sub) for sub in value]
        elif key == "not":
            out[key] = to_json_schema(value)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    keeps_unknown = (node.get("x-kubernetes-preserve-unknown-fields")
                     or node.get("x-kubernetes-embedded-resource"))
    if node.get("type") == "object" and "additionalProperties" not in node and not keeps_unknown:
        out["additionalProperties"] = False  # kubectl's Strict field validation
    if node.get("x-kubernetes-embedded-resource"):
        out.setdefault("properties", {})
        for name in ("apiVersion", "kind"):
            out["properties"].setdefault(name, {"type": "string"})
        out["properties"].setdefault("metadata", {"type": "object"})
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """``value`` with the schema's defaults filled in where a field is absent, recursively (a
    copy), as the API server's structural defaulting does."""
    value = copy.deepcopy(value)
    _default(schema, value)
    return value


def _default(schema: dict[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _default(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, item in value.items():
                if name not in schema.get("properties", {}):
                    _default(extra, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default(schema["items"], item)


def schema_errors(crd: CRD, resource: dict[str, Any]) -> list[str]:
    """The JSON Schema errors of ``resource`` (defaulted) against the CRD, one line each with
    its path."""
    import jsonschema

    validator = jsonschema.Draft7Validator(_json_schema(crd), format_checker=None)
    defaulted = apply_defaults(crd.schema, resource)
    errors = [f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
              for error in sorted(validator.iter_errors(defaulted), key=lambda e: list(e.path))]
    return errors + list_type_errors(crd.schema, defaulted)


def list_type_errors(schema: dict[str, Any], value: Any) -> list[str]:
    """What ``x-kubernetes-list-type`` forbids: two items of a ``set`` alike, two items of a
    ``map`` with the same ``x-kubernetes-list-map-keys``."""
    errors = []
    for node, item, path in _walk(schema, value, "$"):
        kind = node.get("x-kubernetes-list-type")
        if not isinstance(item, list) or kind not in ("set", "map"):
            continue
        keys = node.get("x-kubernetes-list-map-keys", [])
        seen = set()
        for element in item:
            key = (repr(element) if kind == "set" else
                   repr(tuple(element.get(k) for k in keys)) if isinstance(element, dict) else "")
            if key in seen:
                errors.append(f"{path}: duplicate {'item' if kind == 'set' else 'key'} {key} "
                              f"(x-kubernetes-list-type: {kind})")
            seen.add(key)
    return errors


_JSON_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {}


def _json_schema(crd: CRD) -> dict[str, Any]:
    key = (str(crd.path), f"{crd.api_version}/{crd.kind}")
    if key not in _JSON_SCHEMAS:
        schema = to_json_schema(crd.schema)
        # the root's metadata is the API server's ObjectMeta, which a CRD's schema leaves out
        schema["properties"] = {**schema.get("properties", {}), "metadata": {"type": "object"}}
        _JSON_SCHEMAS[key] = schema
    return _JSON_SCHEMAS[key]


def _walk(schema: dict[str, Any], value: Any, path: str) -> Iterator[tuple[dict, Any, str]]:
    """Every (schema node, value, path) where the value is present."""
    yield schema, value, path
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name, item in value.items():
            if name in props:
                yield from _walk(props[name], item, f"{path}.{name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                yield from _walk(schema["additionalProperties"], item, f"{path}[{name!r}]")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _walk(schema["items"], item, f"{path}[{index}]")


@functools.lru_cache(maxsize=None)
def _cel_program(rule: str):
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_report(crd: CRD, resource: dict[str, Any]) -> CelReport:
    """Evaluate every ``x-kubernetes-validations`` rule that applies to ``resource``
    (defaulted): a rule applies where its schema node has a value."""
    import celpy

    report = CelReport()
    defaulted = apply_defaults(crd.schema, resource)
    for node, value, path in _walk(crd.schema, defaulted, "$"):
        for validation in node.get("x-kubernetes-validations", ()):
            rule = validation["rule"]
            if "oldSelf" in rule:
                report.not_run.append((path, rule, "a transition rule (oldSelf): updates only"))
                continue
            try:
                program = _cel_program(rule)
                result = program.evaluate({"self": celpy.json_to_cel(value)})
            except Exception as exc:  # noqa: BLE001 - cel-python lacks a Kubernetes library
                report.not_run.append((path, rule, f"{type(exc).__name__}: {exc}"[:200]))
                continue
            if isinstance(result, Exception) or not isinstance(result, (bool, celpy.celtypes.BoolType)):
                report.not_run.append((path, rule, f"evaluated to {result!r}"[:200]))
                continue
            report.run += 1
            if not bool(result):
                report.failures.append((path, validation.get("message", rule)))
    return report
