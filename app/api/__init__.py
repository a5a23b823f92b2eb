"""The bundled stand-in for the AIXSSS NestJS api (run ``python -m api`` from the app folder)."""
