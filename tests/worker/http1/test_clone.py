"""`_head.clone` (worker/http1/_head.c): a new object with a prototype's slot values, the way requests are made
(corral.worker.wsgi.cycle.new_wsgi_cycle); and requests made that way against requests made by their class."""

from __future__ import annotations

import gc
import os
import struct
import sys
import weakref
from types import SimpleNamespace

import pytest

from corral.worker.http1.native import clone_request
from corral.worker.wsgi.cycle import WsgiCycle, copies_requests, cycle_prototype, new_wsgi_cycle
from corral.worker.wsgi.dispatch import WsgiDispatcher
from corral.worker.wsgi.protocol import WsgiHttpProtocol
from corral.worker.wsgi.threads import WorkerThreads

try:
    from corral.worker.http1._head import clone
except ImportError:
    clone = None

# .ci/run installs corral from a wheel on a machine with a compiler: there the module must have been built.
pytestmark = pytest.mark.skipif(
    clone is None and not os.environ.get("REQUIRE_NATIVE"),
    reason="corral.worker.http1._head was not built (no C compiler at install)",
)


class Base:
    __slots__ = ("a", "b")


class Slotted(Base):
    __slots__ = ("c", "unset", "__weakref__")


class Plain:  # instances have a __dict__
    pass


class WithDict(Base):
    __slots__ = ("__dict__",)


class OverC(tuple):  # laid out by a C type
    __slots__ = ()


class OverDict(dict):
    __slots__ = ("x",)


class OverSpec(struct.Struct):  # a heap type made from a C spec: C fields, no object pointers
    __slots__ = ()


def _slotted() -> Slotted:
    item = Slotted()
    item.a, item.b, item.c = object(), [1], "text"
    return item


def test_a_clone_holds_what_each_slot_of_its_prototype_holds():
    prototype = _slotted()
    copy = clone(prototype)
    assert type(copy) is Slotted and copy is not prototype
    assert copy.a is prototype.a and copy.b is prototype.b and copy.c is prototype.c
    with pytest.raises(AttributeError):
        copy.unset  # noqa: B018 - an unset slot stays unset
    copy.c = "other"  # the copy's slots are its own
    assert prototype.c == "text"


def test_each_value_is_held_once_more_by_a_clone_and_let_go_with_it():
    prototype = _slotted()
    value = prototype.a
    before = sys.getrefcount(value)
    copies = [clone(prototype) for _ in range(10)]
    assert sys.getrefcount(value) == before + 10
    del copies
    assert sys.getrefcount(value) == before


def test_weak_references_are_the_clones_own():
    prototype = _slotted()
    ref = weakref.ref(prototype)
    copy = clone(prototype)
    copy_ref = weakref.ref(copy)
    assert copy_ref() is copy and ref() is prototype
    del copy
    assert copy_ref() is None and ref() is prototype


def test_a_clone_in_a_reference_cycle_is_collected():
    prototype = _slotted()
    copy = clone(prototype)
    copy.c = copy  # a cycle only the garbage collector can free: the clone must be tracked
    ref = weakref.ref(copy)
    del copy
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("make", [Plain, WithDict, OverC, OverDict, int, lambda: OverSpec("i")])
def test_a_class_not_made_of_slots_alone_is_refused(make):
    assert clone(make()) is None


def test_this_interpreter_copies_requests():
    """Where the module is built, requests are made by copying (a layout it refuses would fall back silently)."""
    assert clone(WsgiCycle.__new__(WsgiCycle)) is not None
    if clone_request is not None:
        assert copies_requests() and WsgiHttpProtocol.cycle_class is new_wsgi_cycle


def _dispatcher() -> WsgiDispatcher:
    return WsgiDispatcher(lambda environ, start_response: [], WorkerThreads(1), 65536)


def _slots(cycle: WsgiCycle) -> dict:
    return {name: getattr(cycle, name, "(unset)") for name in WsgiCycle.__slots__ if name != "__weakref__"}


@pytest.mark.skipif(not copies_requests(), reason="the compiled module is off (CORRAL_NO_EXTENSIONS) or not built")
@pytest.mark.parametrize("timed", [False, True])
def test_a_request_made_from_the_prototype_is_the_one_its_class_makes(timed):
    dispatcher = _dispatcher()
    dispatcher.prototype = cycle_prototype(dispatcher)
    protocol = SimpleNamespace(server=SimpleNamespace(wsgi=dispatcher))
    scope = {"type": "http"}
    made = WsgiCycle(protocol, scope, True, True, True, False, timed)  # type: ignore[arg-type]
    copied = new_wsgi_cycle(protocol, scope, True, True, True, False, timed)  # type: ignore[arg-type]
    assert type(copied) is WsgiCycle
    expected, got = _slots(made), _slots(copied)
    if timed:
        assert isinstance(got.pop("t0"), float) and isinstance(expected.pop("t0"), float)
    assert got == expected
    assert copied.protocol is protocol and copied.scope is scope and copied.outbox is dispatcher
    # Nothing mutable is shared between requests: each gets its own list of chunks, and every other value the
    # prototype gives is immutable (a new mutable default in __init__ must be set by new_wsgi_cycle too).
    assert copied.chunks is not dispatcher.prototype.chunks
    shared = {"app", "outbox"}
    for name, value in _slots(dispatcher.prototype).items():
        if name not in shared and name != "chunks":
            assert isinstance(value, (type(None), bool, int, float, str, bytes, tuple)), (name, value)
