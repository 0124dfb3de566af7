"""EVA's video world model (Wan2.1 image-to-video through diffusers) and best-of-N planning.

Top-level modules are ROS-free; the planner node lives in :mod:`eva_planner.ros`.
"""
