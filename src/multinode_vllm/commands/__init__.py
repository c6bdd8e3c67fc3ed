"""Subcommands of `multinode-vllm`: one module each, with `register(subparsers)`."""
