"""The daily team coordination sync: health checks → analysis → memory banks → events."""
