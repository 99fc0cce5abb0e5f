from __future__ import annotations

from amflow_edge.station.capture import CameraTask, QueuedOnce


class RunsAtOnce:
    """A capture loop whose thread takes the task before submit_task has returned."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.ran: list[str] = []

    def submit_task(self, task: CameraTask) -> bool:
        if self.accept:
            self.ran.append(task.name)
            task.run()
        return self.accept


def test_a_task_run_before_its_submit_returns_can_be_asked_for_again() -> None:
    loop = RunsAtOnce()
    task = QueuedOnce("reconnect", lambda: None)
    task.submit_to(loop)
    task.submit_to(loop)
    assert loop.ran == ["reconnect", "reconnect"] and not task.queued


def test_a_task_is_queued_once_until_it_has_run_and_a_refused_one_is_not_queued() -> None:
    waiting: list[CameraTask] = []

    class Queues:
        def submit_task(self, task: CameraTask) -> bool:
            waiting.append(task)
            return True

    task = QueuedOnce("references", lambda: None)
    task.submit_to(Queues())
    task.submit_to(Queues())
    assert len(waiting) == 1 and task.queued
    waiting[0].run()
    assert not task.queued
    refused = QueuedOnce("references", lambda: None)
    refused.submit_to(RunsAtOnce(accept=False))
    assert not refused.queued
