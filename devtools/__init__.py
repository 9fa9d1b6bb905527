"""Development tools, never shipped: the Kong stand-in, a throwaway Postgres, the demo, the
benchmark and the soak test. Run from the repository root, e.g. ``python -m devtools.demo``."""
