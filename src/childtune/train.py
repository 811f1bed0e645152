"""`python -m childtune.train ...`: one fine-tuning run (the run layer's entry logic,
run/train.py; Hydra's configs: conf/)."""
from .run.train import main

if __name__ == "__main__":
    main()
