"""The face analysis rate: the configured rate, lowered when analysis would take more than its CPU share."""

from __future__ import annotations


class AnalysisRate:
    """Adapt frames analysed per second to the measured cost of one analysis.

    A crowded classroom frame costs several times an empty one; instead of falling behind, the rate drops
    so the vision step uses at most `max_duty` of one core, but never below `min_fps` (class-level mood
    needs about one analysis per second).
    """

    def __init__(self, target_fps: float, min_fps: float = 1.0, max_duty: float = 0.5, smoothing: float = 0.2):
        if not 0 < min_fps <= target_fps:
            raise ValueError("need 0 < min_fps <= target_fps")
        if not 0 < max_duty <= 1:
            raise ValueError("max_duty must be in (0, 1]")
        self.target_fps = target_fps
        self.min_fps = min_fps
        self.max_duty = max_duty
        self.smoothing = smoothing
        self.step_s: float | None = None
        self._next_due = float("-inf")

    def restart(self) -> None:
        """Forget the schedule (a source was reopened and its clock starts again)."""
        self._next_due = float("-inf")

    def admit(self, t_capture: float) -> bool:
        """Return whether the frame captured at `t_capture` is due for analysis, and book the next slot.

        Rate-limiting on capture time means a fast camera does not make the analysis rate (or CPU) grow.
        """
        if t_capture < self._next_due - 1e-3:  # a millisecond of slack for float drift in the slot times
            return False
        # On time: the next slot follows this one, so the rate does not drift. Later than a whole period (or the
        # first frame): re-anchor on this frame instead of admitting a burst of late frames.
        base = t_capture if t_capture - self._next_due > self.period else self._next_due
        self._next_due = base + self.period
        return True

    def observe(self, step_s: float) -> None:
        """Record how long one analysis took (seconds)."""
        if self.step_s is None:
            self.step_s = step_s
        else:
            self.step_s += self.smoothing * (step_s - self.step_s)

    @property
    def fps(self) -> float:
        """Frames per second to analyse now."""
        if not self.step_s:
            return self.target_fps
        return max(self.min_fps, min(self.target_fps, self.max_duty / self.step_s))

    @property
    def period(self) -> float:
        return 1.0 / self.fps
