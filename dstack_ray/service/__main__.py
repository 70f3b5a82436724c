from dstack_ray.service.preflight import check_or_exit

check_or_exit()  # before anything that needs more than the standard library

from dstack_ray.service.server import main  # noqa: E402

main()
