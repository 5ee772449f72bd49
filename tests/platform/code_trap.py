"""A module that a test checkpoint names as its encoder: importing it must never happen by loading a file."""

raise AssertionError("tests.platform.code_trap was imported: code named in a checkpoint ran")
