"""``aixsss-ops env``: validate the services' environment, write fresh env files, compare two of them."""
