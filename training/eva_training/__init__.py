"""EVA's offline jobs and the ``eva`` command-line tool (ROS-free, except ``eva replay``)."""
