"""Pictures of perception output (numpy + Pillow; no matplotlib needed).

* :mod:`~perception.viz.camera_view`: camera frames with detection boxes, class and score;
* :mod:`~perception.viz.range_view`: range images coloured by predicted label and by ground truth;
* :mod:`~perception.viz.bev_view`: bird's-eye views of point clouds with instance boxes and ids;
* :mod:`~perception.viz.plots`: KITTI precision/recall curves and training curves;
* :mod:`~perception.viz.report`: an HTML report linking pictures;
* :mod:`~perception.viz.demo`: ``perception demo``, all of the above on the bundled sample.
"""
