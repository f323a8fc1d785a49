"""One module per command (doit's cmd_*.py habit): each adds its arguments with `add(commands,
common)` and runs with `main(args) -> exit status`. cli.py holds the parser and the exit map."""

COMMANDS = ("run", "lock", "list", "gc", "clean", "fsck", "verify", "shell", "push", "key", "install", "exec")
