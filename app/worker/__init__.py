"""The bundled stand-in for the AIXSSS BullMQ worker (run ``python -m worker`` from the app folder)."""
