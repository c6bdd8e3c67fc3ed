import sys

from multinode_vllm.cli import main

sys.exit(main())
