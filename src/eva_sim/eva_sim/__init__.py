"""Simulated aloha-agilex robot, process harness and transport tools for demos and tests.

Top-level modules are ROS-free; node executables import rclpy themselves.
"""
