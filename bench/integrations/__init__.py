"""Ways in from outside: the pytest plugin, `compbench load`, `compbench list`."""
