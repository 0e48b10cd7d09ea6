"""Train (and test) one experiment: ``python src/train.py experiment=phantom_mt``."""

from scdl.commands.train import command

if __name__ == "__main__":
    command()
