"""Device profiles without servers: the built-ins declare exactly the contract's forms, specs are
validated before they are stored, templates beyond the simple forms are named, and the Sparkplug
schema the drain decodes with is the one pysparkplug ships."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from shared.broker.contract import BUILTIN_PROFILE_TOPICS, validate_profile_form
from shared.core.exceptions import InvalidProfile
from shared.ingest.builtin_profiles import SPECS
from shared.ingest.decoding import ProfileSpec, compile_path
from shared.ingest.homeassistant import parse_template
from shared.ingest.profiles import validate_spec
from shared.ingest.sparkplug import sparkplug_b_pb2
from shared.ingest.validation import Rejected

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_builtin_specs_declare_exactly_the_contract_forms(name):
    spec = ProfileSpec.model_validate(SPECS[name])
    topics = BUILTIN_PROFILE_TOPICS[name]
    assert spec.publish_forms == list(topics.publish)
    assert spec.subscribe == list(topics.subscribe)


@pytest.mark.parametrize(
    ("form", "problem"),
    [("cmd", "command"), ("telemetry", "native"), ("x/state", "native"), ("a/#", "level"), ("a b", "level")],
)
def test_forms_a_profile_may_not_declare(form, problem):
    with pytest.raises(ValueError, match=problem):
        validate_profile_form(form)


def test_an_invalid_spec_is_refused_with_where_it_is_wrong():
    with pytest.raises(InvalidProfile, match="not valid JMESPath"):
        validate_spec({"forms": [{"topic": "a/b", "metrics": [{"path": "x[?", "name": "x"}]}]})


@pytest.mark.parametrize(
    ("template", "payload", "value"),
    [
        ("{{ value }}", "21.5", "21.5"),
        ("{{ value_json.temperature }}", '{"temperature": 21.5}', 21.5),
        ("{{ value_json['AM2301'].Humidity | float }}", '{"AM2301": {"Humidity": "48.2"}}', 48.2),
        ("{{ value_json.list[1] | int * 10 }}", '{"list": [1, 2.7]}', 20.0),
    ],
)
def test_simple_templates(template, payload, value):
    parsed = parse_template(template)
    assert parsed.apply(payload, json.loads(payload) if parsed.json else None) == value


def test_other_templates_are_named():
    with pytest.raises(Rejected, match=r"states\('sensor.x'\)"):
        parse_template("{{ states('sensor.x') }}")


def test_conditions_read_directly_agree_with_jmespath():
    condition = compile_path("method == 'NotifyStatus' || method == 'NotifyFullStatus'")
    assert [condition({"method": m}) for m in ("NotifyStatus", "NotifyFullStatus", "NotifyEvent")] == [
        True,
        True,
        False,
    ]


def test_the_sparkplug_schema_is_pysparkplugs():
    python = REPO / ".venv" / "sparkplug" / "bin" / "python"
    assert python.exists(), "scripts/install-deps creates .venv/sparkplug"
    theirs = subprocess.run(
        [
            str(python),
            "-c",
            "from pysparkplug._protobuf import sparkplug_b_pb2 as p; print(p.DESCRIPTOR.serialized_pb.hex())",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert sparkplug_b_pb2.DESCRIPTOR.serialized_pb.hex() == theirs
