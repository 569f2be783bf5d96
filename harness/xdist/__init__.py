"""Under pytest-xdist: the controller's broker, the files a worker gets its branch through,
a database per worker."""
