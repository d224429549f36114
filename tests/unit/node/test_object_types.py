"""Tests of object-type loading and of the callable-method tables."""

from __future__ import annotations

import pytest
import structlog
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from goverse.node import ObjectLoadError, load_object_types, method_table
from goverse.objects import ObjectDefinitionError
from goverse.server import StartupError
from tests.unit.node.sample_objects import Derived, Forwarder, Misbehaving


def test_bundled_examples_load_with_their_methods() -> None:
    """The default modules register Counter and ChatRoom with their declared types."""
    types = load_object_types(["goverse.examples.counter", "goverse.examples.chat"])
    assert sorted(types) == ["ChatRoom", "Counter"]
    increment = types["Counter"].methods["Increment"]
    assert increment.request_type is IncrementRequest
    assert increment.response_type is CounterValue
    assert sorted(types["ChatRoom"].methods) == ["Join", "Leave", "Send"]


def test_only_classes_defined_in_the_module_are_registered() -> None:
    """A class a module merely imports is not registered again under that module."""
    types = load_object_types(["tests.helpers.objects"])
    assert sorted(types) == [
        "Failing",
        "Identity",
        "Ledger",
        "Patient",
        "PeriodicLedger",
        "Pusher",
        "Relay",
        "Sleeper",
        "Witness",
    ]


def test_methods_that_break_the_rules_are_not_callable() -> None:
    """Lower-case, sync, unannotated and two-argument methods are left out of the table."""
    table = method_table(Misbehaving)
    assert sorted(table) == ["Refuse", "WrongType"]
    assert table["WrongType"].request_type is Empty
    assert table["WrongType"].response_type is Int64Value


def test_methods_left_out_are_logged_with_the_reason() -> None:
    """Each upper-case method that is not callable is logged once, saying why."""
    with structlog.testing.capture_logs() as logs:
        method_table(Misbehaving)
    left_out = {
        entry["method"]: entry["reason"]
        for entry in logs
        if entry["event"] == "method is not callable"
    }
    assert left_out == {
        "Sync": "it is not an async def",
        "TwoArgs": "it does not take exactly one request argument",
        "Untyped": "its request parameter is not annotated with a protobuf message class",
    }


def test_inherited_methods_are_callable() -> None:
    """A subclass serves the methods of its parent object class."""
    table = method_table(Derived)
    assert sorted(table) == sorted(method_table(Forwarder)) == ["Forward", "SleepOn", "WhoCalls"]
    assert table["Forward"].request_type is StringValue


def test_a_module_that_fails_to_import_is_a_clear_error() -> None:
    """The error names the module and the exception."""
    with pytest.raises(ObjectLoadError, match=r"broken_objects.*broken on purpose"):
        load_object_types(["tests.unit.node.broken_objects"])


def test_a_missing_module_is_a_clear_error() -> None:
    with pytest.raises(ObjectLoadError, match="no_such_module"):
        load_object_types(["tests.unit.node.no_such_module"])


def test_two_classes_with_one_type_name_are_refused() -> None:
    """Duplicate type names across modules stop the node from starting."""
    with pytest.raises(ObjectLoadError, match="'Tally' is defined twice"):
        load_object_types(["tests.unit.node.sample_objects", "tests.unit.node.duplicate_objects"])


def test_a_module_without_object_types_is_refused() -> None:
    with pytest.raises(ObjectLoadError, match="defines no Object subclass"):
        load_object_types(["tests.unit.node.empty_objects"])


def test_a_load_error_is_a_startup_error() -> None:
    """The node's load error is the object API's definition error and a StartupError, so
    ``goverse-node`` exits with status 2 for it."""
    with pytest.raises(ObjectLoadError) as caught:
        load_object_types(["tests.unit.node.empty_objects"])
    assert isinstance(caught.value, ObjectDefinitionError)
    assert isinstance(caught.value, StartupError)
