import sys

from stream_lstm.cli import main

sys.exit(main())
