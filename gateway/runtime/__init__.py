"""Runtimes that execute the supervisor's steps: process (local processes) and docker (Engine API)."""
