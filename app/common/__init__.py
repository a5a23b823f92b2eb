"""What the bundled api and worker share: env loading, database and object-store access."""
