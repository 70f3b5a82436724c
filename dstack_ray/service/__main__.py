from dstack_ray.service.server import main

main()
