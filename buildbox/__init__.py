"""buildbox: reproducible builds in chroot sandboxes."""

__version__ = "0.1.0"
