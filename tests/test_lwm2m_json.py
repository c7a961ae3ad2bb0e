"""The pure parts of instance reads: grouping observed paths, and LwM2M JSON to the
plain-text values a single-resource read gives."""

from __future__ import annotations

import pytest

from bridge.upstream.lwm2m_json import (
    LWM2M_JSON,
    answered_values,
    instance_values,
    is_lwm2m_json,
    read_groups,
)


def test_resources_of_one_instance_are_grouped_and_the_rest_read_alone() -> None:
    paths = ["/3311/0/5850", "/3303/0/5700", "/3311/0/5851", "/3311/1/5850", "/a/b/c", "/3/0"]
    assert read_groups(paths) == [
        ("/3311/0", ["/3311/0/5850", "/3311/0/5851"]),
        ("/3303/0/5700", ["/3303/0/5700"]),
        ("/3311/1/5850", ["/3311/1/5850"]),
        ("/a/b/c", ["/a/b/c"]),
        ("/3/0", ["/3/0"]),
    ]
    assert read_groups([]) == []


def test_values_keep_the_devices_text_and_booleans_become_1_and_0() -> None:
    payload = (
        b'{"bn":"/3311/0/","e":[{"n":"5850","bv":true},{"n":"5851","v":50},'
        b'{"n":"5820","v":21.50},{"n":"5706","sv":"ff8800"},{"n":"5801","bv":false},'
        b'{"n":"9","ov":"3:0"},{"n":"5750","v":-1e3}]}'
    )
    assert instance_values("/3311/0", payload) == {
        "/3311/0/5850": b"1",
        "/3311/0/5851": b"50",
        "/3311/0/5820": b"21.50",
        "/3311/0/5706": b"ff8800",
        "/3311/0/5801": b"0",
        "/3311/0/9": b"3:0",
        "/3311/0/5750": b"-1e3",
    }


def test_entries_without_one_known_value_are_left_out_for_single_reads() -> None:
    payload = (
        b'{"e":[{"n":"1","v":1,"sv":"x"},{"n":"2"},{"n":"3","bv":"yes"},{"n":"4","sv":5},'
        b'"junk",{"n":5,"v":1},{"n":"6","v":true}]}'
    )
    # No "bn": names are relative to what was read.
    assert instance_values("/9/0", payload) == {}
    assert instance_values("/9/0/", b'{"e":[{"n":"7","sv":"ok"}]}') == {"/9/0/7": b"ok"}


@pytest.mark.parametrize(
    "payload", [b"", b"not json", b"[]", b'{"bn":"/1/0/"}', b'{"e":{}}', b"\xff\xfe"]
)
def test_a_payload_that_is_not_lwm2m_json_is_refused(payload: bytes) -> None:
    with pytest.raises(ValueError, match="not LwM2M JSON"):
        instance_values("/1/0", payload)


def test_content_types() -> None:
    assert is_lwm2m_json("application/vnd.oma.lwm2m+json")
    assert is_lwm2m_json("Application/VND.OMA.LWM2M+JSON; charset=utf-8")
    assert is_lwm2m_json("11543")
    assert not is_lwm2m_json("application/vnd.oma.lwm2m+tlv")
    assert not is_lwm2m_json("application/json")
    assert not is_lwm2m_json(None)
    assert not is_lwm2m_json("")


def test_answered_values_are_empty_for_another_format_or_a_bad_payload() -> None:
    good = b'{"e":[{"n":"5850","bv":true}]}'
    assert answered_values("/3311/0", LWM2M_JSON, good) == {"/3311/0/5850": b"1"}
    assert answered_values("/3311/0", "application/vnd.oma.lwm2m+tlv", good) == {}
    assert answered_values("/3311/0", None, good) == {}
    assert answered_values("/3311/0", LWM2M_JSON, b"not json") == {}
