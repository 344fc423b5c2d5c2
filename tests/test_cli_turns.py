"""The chat's turn tracker and messages: pure logic, every ordering of reply and events."""

from __future__ import annotations

import logging

import pytest

from tether.cli.chatloop import ended_message, quit_message
from tether.cli.turns import InvalidTurnState, TurnState, TurnTracker


def test_reply_then_events() -> None:
    t = TurnTracker()
    t.submitting()
    assert t.state is TurnState.SUBMITTING and not t.done
    t.submitted("T1")
    assert t.state is TurnState.RUNNING and t.turn_id == "T1"
    t.started("T1")
    t.ended("T1")
    assert t.done and t.turn_id is None


def test_whole_turn_before_its_reply_does_not_rearm_it() -> None:
    """The hang of issue 10 bug 2: turn.start ... turn.end, then the prompt.submit reply."""
    t = TurnTracker()
    t.submitting()
    t.started("T1")
    assert t.state is TurnState.RUNNING and t.began == "T1"
    t.ended("T1")
    assert t.done
    t.submitted("T1")  # late reply for a turn that already ended
    assert t.done and t.state is TurnState.IDLE


def test_start_before_reply_then_end_after() -> None:
    t = TurnTracker()
    t.submitting()
    t.started("T1")
    t.submitted("T1")
    assert t.state is TurnState.RUNNING
    t.ended("T1")
    assert t.done


def test_refused_submit_returns_to_idle() -> None:
    t = TurnTracker()
    t.submitting()
    t.failed()
    assert t.done and t.began is None


def test_an_old_turns_end_does_not_end_the_running_one() -> None:
    t = TurnTracker()
    t.started("T2")
    t.ended("T1")
    assert t.state is TurnState.RUNNING and t.turn_id == "T2"
    t.ended("T2")
    assert t.done


def test_a_replayed_start_of_an_ended_turn_is_ignored() -> None:
    t = TurnTracker()
    t.started("T1")
    t.ended("T1")
    t.started("T1")
    assert t.done


def test_reset_forgets_the_running_turn() -> None:
    t = TurnTracker()
    t.submitting()
    t.submitted("T1")
    t.reset()
    assert t.done
    t.submitted("T1")  # its reply, late: still nothing to wait for
    assert t.done


def test_a_reply_without_a_turn_means_nothing_to_wait_for() -> None:
    t = TurnTracker()
    t.submitting()
    t.submitted(None)
    assert t.done


@pytest.mark.parametrize(
    ("result", "said"),
    [
        ({"ended": True, "persisted": True}, "left; continue with: tether chat --resume S"),
        ({"ended": True, "others_attached": 0}, "left; continue with: tether chat --resume S"),
        (
            {"ended": False, "others_attached": 1},
            "detached; the session stays open because 1 other client is attached; "
            "continue with: tether chat --resume S",
        ),
        (
            {"ended": False, "others_attached": 3},
            "detached; the session stays open because 3 other clients are attached; "
            "continue with: tether chat --resume S",
        ),
    ],
)
def test_quit_says_whether_it_ended_or_detached(result: dict[str, object], said: str) -> None:
    assert quit_message("S", result) == said


def test_ended_elsewhere_message() -> None:
    assert ended_message("S", {"reason": "manual"}) == "[session S was ended (manual)]"
    assert (
        ended_message("S", {"reason": "reaped", "detail": "pid 7 gone"})
        == "[session S was ended (reaped: pid 7 gone)]"
    )


def test_a_second_prompt_while_one_is_unanswered_is_a_bug() -> None:
    t = TurnTracker()
    t.submitting()
    with pytest.raises(InvalidTurnState, match="already being submitted"):
        t.submitting()
    t.failed()
    t.submitting()  # after the refusal, a new prompt is fine
    assert t.state is TurnState.SUBMITTING


def test_every_change_of_state_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tether.chat")
    t = TurnTracker()
    t.submitting()
    t.submitted("T1")
    t.ended("T1")
    assert caplog.messages == [
        "turn idle -> submitting (None)",
        "turn submitting -> running (T1)",
        "turn running -> idle (None)",
    ]
