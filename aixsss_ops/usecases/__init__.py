"""One function per operation, taking the ``Deployment``: the Typer commands and the playbook actions both call
these."""
