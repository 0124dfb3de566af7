"""ROS 2 layer of eva_sim: node executables and tools that use rclpy."""
