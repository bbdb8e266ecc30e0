"""The reported state the agent sends upstream, with a version that bumps on every change.

The connection sends ReportedState whenever the version moved since it last sent; waiting
on `wait_changed` lets its sender wake up at once instead of polling.
"""

from __future__ import annotations

import threading

from proto import fleet_pb2

Phase = fleet_pb2.ReportedState.Phase


class ReportedStateHolder:
    def __init__(self):
        self._cond = threading.Condition()
        self._state = fleet_pb2.ReportedState(phase=fleet_pb2.ReportedState.IDLE)
        self._version = 0

    def update(self, *, profiles=None, sensors=None, **fields) -> None:
        """Set fields (and optionally replace the repeated/message ones); bump if anything changed."""
        with self._cond:
            before = self._state.SerializeToString(deterministic=True)
            for name, value in fields.items():
                setattr(self._state, name, value)
            if profiles is not None:
                del self._state.profiles[:]
                self._state.profiles.extend(profiles)
            if sensors is not None:
                self._state.sensors.CopyFrom(sensors)
            if self._state.SerializeToString(deterministic=True) != before:
                self._version += 1
                self._cond.notify_all()

    def set_sensors_quietly(self, sensors: fleet_pb2.SensorReading) -> None:
        """Keep the latest reading in the state without counting it as a change (readings move
        every second; they travel in DeviceMetrics, the state carries the one at the last change)."""
        with self._cond:
            self._state.sensors.CopyFrom(sensors)

    def snapshot(self) -> tuple[int, fleet_pb2.ReportedState]:
        with self._cond:
            copy = fleet_pb2.ReportedState()
            copy.CopyFrom(self._state)
            return self._version, copy

    @property
    def version(self) -> int:
        with self._cond:
            return self._version

    def wait_changed(self, since: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._version != since, timeout)
