"""The `dstack-ray` command line (installed as the `dstack_ray_cli` package)."""
