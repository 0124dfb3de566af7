"""ROS 2 layer of eva_idm: message conversions and nodes (imports ROS message packages)."""
