"""docker compose files rendered from the same container specs the docker runtime creates."""
