from buildbox.cli import entry_point

entry_point()
