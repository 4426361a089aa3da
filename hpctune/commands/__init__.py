"""One module per ``hpctune`` subcommand; each exports ``command`` (see hpctune/cli.py)."""
