"""ROS interfaces: a rosbridge client (roslibpy), message conversions and bag replay (rosbags).

* :mod:`perception.ros.messages`: PointCloud2 / Image / CompressedImage <-> numpy, pure functions;
* :mod:`perception.ros.results`: results as vision_msgs, labelled PointCloud2 and RViz markers, for ROS 1
  or ROS 2, and rosbridge JSON encoding;
* :mod:`perception.ros.sync`: pairing camera and LiDAR messages by nearest stamp;
* :mod:`perception.ros.frames`: one paired frame through the pipeline to result messages;
* :mod:`perception.ros.bridge`: the rosbridge client (``perception ros``);
* :mod:`perception.ros.replay`: bag replay (``perception replay``);
* :mod:`perception.ros.typedefs`: vision_msgs definitions and dict <-> rosbags messages.

Nothing here needs a ROS installation. roslibpy and rosbags (the ``[ros]`` extra) are imported only
where a connection is made or a bag is read or written, so the conversions work without them. See
``docs/ros.md`` for usage.
"""

from perception.ros.messages import MessageError, Stamp

__all__ = ["MessageError", "Stamp"]
