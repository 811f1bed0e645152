"""`python -m childtune.plan ...`: the studies' plans, what is done and missing, and launching
what is missing (study/plan.py)."""
import sys

from .study.plan import main

if __name__ == "__main__":
    sys.exit(main())
