"""What the process runs on: devices and hosts, the allocator, the package versions.

Imports nothing of the package.
"""
