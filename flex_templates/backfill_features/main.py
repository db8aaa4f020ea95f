"""Flex Template entry file (FLEX_TEMPLATE_PYTHON_PY_FILE) for pipelines.backfill_features.

Google's launcher runs `python main.py --name=value ...` with the template parameters and
Dataflow's own options (runner, project, region, job name, template location); the pipeline
package itself is installed in the image, this file only hands the arguments over.
"""

import sys

from pipelines.backfill_features import main

if __name__ == "__main__":
    main(sys.argv[1:])
