"""The planner's ROS 2 layer: the ``planner_node`` lifecycle node and its message helpers (imports rclpy)."""
