"""`python -m childtune.aggregate ...`: every study's tables and figures from the records
(study/aggregate.py)."""
from .study.aggregate import main

if __name__ == "__main__":
    main()
