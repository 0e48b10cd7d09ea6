"""Prepare a data set once: ``python src/prepare_data.py data=phantom`` (or ``data=amos
data.raw_dir=...``). Reads the raw layout, preprocesses every case with the data config's protocol
and writes the cache that training reads. Idempotent; safe to interrupt and re-run."""

from scdl.commands.prepare_data import command

if __name__ == "__main__":
    command()
