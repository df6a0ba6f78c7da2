"""``python -m monai_pixelcam.data.synthetic``: see :mod:`monai_pixelcam.data.synthetic.cli`."""

import sys

from .cli import main

sys.exit(main())
