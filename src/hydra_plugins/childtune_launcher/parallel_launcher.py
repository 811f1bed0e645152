"""Hydra instantiates launchers only from the hydra_plugins package: this names childtune's
parallel launcher there (the code is src/childtune/run/launcher.py)."""
from childtune.run import launcher


class ParallelLauncher(launcher.ParallelLauncher):
    pass
