"""Write the synthetic digits segmentation dataset: python scripts/make_segmentation_dataset.py DEST [N] [SIZE]."""

from __future__ import annotations

import sys
from pathlib import Path

from dinotune.data.bundled import make_segmentation_dataset

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    print(make_segmentation_dataset(Path(sys.argv[1]), n_images=n, size=size))
