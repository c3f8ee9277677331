"""Ray job: prepare the data, train SASRec with Ray Train and write the bundle.

    ray job submit --working-dir . -- python jobs/train.py --config configs/ml-100k.yaml \
        data.output_dir=/shared/rayrec/prepared train.storage_path=/shared/rayrec/runs \
        train.bundle_dir=/shared/rayrec/bundle

Add --skip-prepare to reuse a prepared directory. Runs unchanged as a local script. Use
absolute paths on a cluster: a job starts in a temporary copy of the working
directory, which is deleted afterwards.
"""

import sys

from rayrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
