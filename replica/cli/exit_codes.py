"""The exit codes of every `replica` command, as README.md documents them.

One place, so `serve`, `status` and `cluster up` cannot drift apart.
"""

EXIT_OK = 0
EXIT_FAILURE = 1  # a node that could not listen, a status with a node down, a cluster member died
EXIT_USAGE = 2  # a bad command line, cluster file or data dir, as argparse itself uses
