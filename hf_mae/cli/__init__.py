"""The programs, one module each (`parse_args` + `main(args)`), and their shared flags (`arguments`): the only
layer that sees an argparse Namespace. `scripts/*.py` forward to them."""
