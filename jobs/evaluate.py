"""Ray job: full-ranking evaluation of a bundle on a prepared split.

    ray job submit --working-dir . -- python jobs/evaluate.py \
        --bundle /shared/rayrec/bundle --prepared /shared/rayrec/prepared --split test
"""

import sys

from rayrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
