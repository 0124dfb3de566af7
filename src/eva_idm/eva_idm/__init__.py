"""EVA's inverse dynamics model, executability reward and plan-to-motion gate.

Everything importable from the top level of this package is ROS-free: training, benchmarks and
the ROS nodes share these modules so serving and training cannot drift. ROS-specific code lives
in :mod:`eva_idm.ros` and is imported only by nodes.
"""
