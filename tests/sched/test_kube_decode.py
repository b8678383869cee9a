"""The Kubernetes backend decodes every watch event and list page with msgspec
(``kube._decode_json``): the same objects ``json.loads`` gives, whatever the text."""

from __future__ import annotations

import json

import pytest

from flexai_sched.kube import _decode_json

from .fixtures import limits, pod

EVENTS = [
    json.dumps({"type": "ADDED", "object": pod("p", limits(1, cores=20, memory_gib=3))}),
    json.dumps({"type": "MODIFIED", "object": {"metadata": {"resourceVersion": "12", "labels": {"é": "ü"}}}}),
    '{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"99"}},"n":[1,2.5,-3e2,null,true,123456789012345678901]}',
    '{"x":"\\ud800"}',  # a lone surrogate: msgspec refuses it, json takes it
    '{"x":"\\u00e9\\n\\"q\\""}',
]


@pytest.mark.parametrize("text", EVENTS)
def test_watch_events_decode_as_json_decodes_them(text: str) -> None:
    assert _decode_json(text) == json.loads(text)
    assert _decode_json(text.encode()) == json.loads(text)


def test_text_that_is_not_json_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        _decode_json('{"type": ')
