"""Ray job: preprocess interactions into leave-one-out splits.

    ray job submit --working-dir . -- python jobs/prepare.py --config configs/ml-100k.yaml \
        data.output_dir=/shared/rayrec/ml-100k/prepared

Runs unchanged as a local script. Use absolute paths on a cluster: a job starts
in a temporary copy of the working directory, which is deleted afterwards.
"""

import sys

from rayrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
