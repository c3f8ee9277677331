"""Ray job: offline top-k for every user of a bundle, written to Parquet.

    ray job submit --working-dir . -- python jobs/batch_recommend.py \
        --bundle /shared/rayrec/bundle --output /shared/rayrec/top10 -k 10

Add --users FILE to score only some users. Runs unchanged as a local script. Use absolute
paths or URIs on a cluster: a job starts in a temporary copy of the working directory,
which is deleted afterwards.
"""

import sys

from rayrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["batch-recommend", *sys.argv[1:]]))
