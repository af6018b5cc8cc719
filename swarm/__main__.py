"""`python -m swarm`: the `swarm` command."""

from swarm.cli.main import main

main()
