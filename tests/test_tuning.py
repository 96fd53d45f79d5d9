"""clusterfusion.tuning: the launch settings in force (plan pins of each op, PDL),
nested and per thread, checked where they are set."""

from __future__ import annotations

import pytest

import clusterfusion


def test_tuning_context_nests_and_restores():
    assert clusterfusion.current_tuning() == clusterfusion.Tuning("auto", True)
    with clusterfusion.tuning(plan="64:2") as outer:
        assert outer == clusterfusion.Tuning("64:2", True)
        with clusterfusion.tuning(pdl=False) as inner:
            assert inner == clusterfusion.Tuning("64:2", False)
        assert clusterfusion.current_tuning() == outer
        with pytest.raises(RuntimeError), clusterfusion.tuning(plan="8:1"):
            raise RuntimeError
        assert clusterfusion.current_tuning() == outer
    assert clusterfusion.current_tuning() == clusterfusion.Tuning()


def test_tuning_rejects_wrong_types():
    with pytest.raises(TypeError, match=r"argument 'plan' must be a str"):
        with clusterfusion.tuning(plan=(64, 2)):
            pass
    with pytest.raises(TypeError, match=r"argument 'pdl' must be a bool; got 0"):
        with clusterfusion.tuning(pdl=0):
            pass
    with pytest.raises(TypeError, match=r"argument 'block_plan' must be a str"):
        with clusterfusion.tuning(block_plan=1):
            pass


def test_block_plan_is_its_own_setting():
    with clusterfusion.tuning(plan="184:8", block_plan="64:1;auto") as t:
        assert (t.plan, t.block_plan, t.pdl) == ("184:8", "64:1;auto", True)
        with clusterfusion.tuning(pdl=False) as inner:
            assert (inner.plan, inner.block_plan, inner.pdl) == ("184:8", "64:1;auto", False)
    assert clusterfusion.current_tuning() == clusterfusion.Tuning()


def test_tuning_is_per_thread():
    import threading

    seen = []
    with clusterfusion.tuning(plan="64:2"):
        worker = threading.Thread(target=lambda: seen.append(clusterfusion.current_tuning()))
        worker.start()
        worker.join()
    assert seen == [clusterfusion.Tuning()]


@pytest.mark.parametrize("setting, pin, expected", [
    ("block_plan", "64:2", r"argument 'block_plan' must be \"auto\" or \"UP;DOWN\""),
    ("block_plan", "64:2;7:7", r"argument 'block_plan \(down\)' must be \"auto\" or \"BLOCK_N:CLUSTER"),
    ("attention_plan", "abc;auto", r"argument 'attention_plan \(qkv\)' must be"),
])
def test_tuning_checks_a_pin_where_it_is_set(setting, pin, expected):
    with pytest.raises(ValueError, match="clusterfusion.tuning: " + expected):
        with clusterfusion.tuning(**{setting: pin}):
            pass
    assert clusterfusion.current_tuning() == clusterfusion.Tuning()


def test_layer_plan_is_its_own_setting_and_is_checked_where_it_is_set():
    with clusterfusion.tuning(layer_plan="one_launch") as t:
        assert (t.layer_plan, t.plan, t.block_plan) == ("one_launch", "auto", "auto")
        with clusterfusion.tuning(pdl=False) as inner:
            assert (inner.layer_plan, inner.pdl) == ("one_launch", False)
    assert clusterfusion.current_tuning() == clusterfusion.Tuning()
    with pytest.raises(ValueError, match=r"clusterfusion.tuning: argument 'layer_plan' must be one of .*got 'fused'"):
        with clusterfusion.tuning(layer_plan="fused"):
            pass
    with pytest.raises(TypeError, match=r"argument 'layer_plan' must be one of .*got 1"):
        with clusterfusion.tuning(layer_plan=1):
            pass
    assert clusterfusion.current_tuning() == clusterfusion.Tuning()
