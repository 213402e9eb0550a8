"""Pairing camera and LiDAR messages by nearest stamp, with explicit time (no clocks, no threads).

The LiDAR scan leads: each scan is paired with the camera image whose ``header.stamp`` is nearest to
the scan's, if that image lies within ``tolerance_s``. A scan is decided as soon as an image stamped
at or after the scan has arrived (a later image can only be further away, assuming stamps increase on
each topic) or once it has waited ``max_wait_s`` for one; a scan with no image within tolerance then
runs LiDAR-only. Images that no scan takes are skipped (:attr:`StampPairer.skipped`); each image is
used at most once. With only one sensor configured every message is a frame of its own.

Everything is driven by the ``now`` argument (seconds on any monotonic clock: the bridge passes
``time.monotonic()``, bag replay the recording time), so the behaviour is deterministic and testable.
Items whose receive time is more than ``max_age_s`` before ``now`` are dropped, not kept waiting
(:attr:`StampPairer.dropped`).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Literal

from perception.ros.messages import Stamp

Kind = Literal["lidar", "camera"]


@dataclass(frozen=True)
class Incoming:
    """One received sensor message.

    Attributes:
        kind: ``lidar`` (PointCloud2) or ``camera`` (Image / CompressedImage).
        stamp: ``header.stamp`` of the message.
        frame_id: ``header.frame_id`` of the message.
        message: the message itself (a mapping; decoded later, off the receiving thread).
        received: when it arrived, seconds on the caller's monotonic clock (or recording time).
    """

    kind: Kind
    stamp: Stamp
    frame_id: str
    message: Any
    received: float


@dataclass(frozen=True)
class FramePair:
    """What one pipeline frame is made of: a scan and/or an image.

    ``received`` is the arrival time of the newer part (what the age limit is measured from).
    """

    lidar: Incoming | None
    camera: Incoming | None

    def __post_init__(self) -> None:
        if self.lidar is None and self.camera is None:
            raise ValueError("a frame needs a scan or an image")

    @property
    def stamp(self) -> Stamp:
        """The scan's stamp, else the image's."""
        lead = self.lidar if self.lidar is not None else self.camera
        assert lead is not None
        return lead.stamp

    @property
    def received(self) -> float:
        return max(i.received for i in (self.lidar, self.camera) if i is not None)


class StampPairer:
    """Pairs scans with images by nearest stamp (see the module docstring).

    Args:
        lidar: a LiDAR topic is configured.
        camera: a camera topic is configured.
        tolerance_s: the largest |image stamp - scan stamp| in seconds that still makes a pair.
        max_wait_s: how long a scan waits (on the ``now`` clock) for an image stamped at or after it.
        max_age_s: items received longer ago than this are dropped.
        max_pending: at most this many scans and this many images are held; beyond that the oldest
            go (scans counted as dropped, images as skipped).

    Not thread-safe: the caller serialises calls.
    """

    def __init__(
        self,
        *,
        lidar: bool,
        camera: bool,
        tolerance_s: float = 0.05,
        max_wait_s: float = 0.2,
        max_age_s: float = 1.0,
        max_pending: int = 16,
    ) -> None:
        if not (lidar or camera):
            raise ValueError("configure a LiDAR topic, a camera topic or both")
        for name, value in (("tolerance_s", tolerance_s), ("max_wait_s", max_wait_s), ("max_age_s", max_age_s)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.lidar = lidar
        self.camera = camera
        self.tolerance_ns = round(tolerance_s * 1e9)
        self.max_wait_s = max_wait_s
        self.max_age_s = max_age_s
        self.max_pending = max_pending
        self._scans: collections.deque[Incoming] = collections.deque()
        self._images: collections.deque[Incoming] = collections.deque()
        #: scans or images dropped for age or overflow (never processed)
        self.dropped = 0
        #: images no scan took (expected when the camera runs faster than the LiDAR)
        self.skipped = 0
        #: frames handed out
        self.paired = 0

    def add(self, item: Incoming, now: float) -> list[FramePair]:
        """Take a message; return the frames that are now complete (possibly none)."""
        if (item.kind == "lidar" and not self.lidar) or (item.kind == "camera" and not self.camera):
            raise ValueError(f"no {item.kind} topic is configured")
        if not (self.lidar and self.camera):
            if now - item.received > self.max_age_s:
                self.dropped += 1
                return []
            self.paired += 1
            return [FramePair(item, None) if item.kind == "lidar" else FramePair(None, item)]
        queue = self._scans if item.kind == "lidar" else self._images
        queue.append(item)
        if len(queue) > self.max_pending:
            queue.popleft()
            if item.kind == "lidar":
                self.dropped += 1
            else:
                self.skipped += 1
        return self.poll(now)

    def poll(self, now: float) -> list[FramePair]:
        """Drop what is too old; return the scans whose wait is over (call it regularly)."""
        self._expire(now)
        return self._release(now, final=False)

    def flush(self) -> list[FramePair]:
        """Decide every pending scan with the images at hand (end of a recording)."""
        out = self._release(now=float("inf"), final=True)
        self.skipped += len(self._images)
        self._images.clear()
        return out

    def pending(self) -> tuple[int, int]:
        """(scans, images) held."""
        return len(self._scans), len(self._images)

    def _expire(self, now: float) -> None:
        for queue in (self._scans, self._images):
            while queue and now - queue[0].received > self.max_age_s:
                queue.popleft()
                self.dropped += 1

    def _release(self, now: float, final: bool) -> list[FramePair]:
        out: list[FramePair] = []
        while self._scans:
            scan = self._scans[0]
            newest_image = self._images[-1].stamp.ns if self._images else None
            decided = (
                final
                or (newest_image is not None and newest_image >= scan.stamp.ns)
                or now - scan.received >= self.max_wait_s
            )
            if not decided:
                break
            self._scans.popleft()
            best_index, best_gap = -1, self.tolerance_ns + 1
            for k, image in enumerate(self._images):
                gap = abs(image.stamp.ns - scan.stamp.ns)
                if gap < best_gap:
                    best_index, best_gap = k, gap
            image = None
            if best_index >= 0:
                image = self._images[best_index]
                # the chosen image and every image before it are used up
                for _ in range(best_index + 1):
                    self._images.popleft()
                self.skipped += best_index
            # images too old for any later scan can go
            while self._images and self._images[0].stamp.ns < scan.stamp.ns - self.tolerance_ns:
                self._images.popleft()
                self.skipped += 1
            self.paired += 1
            out.append(FramePair(scan, image))
        return out
