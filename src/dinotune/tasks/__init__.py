"""Classification heads trained on frozen DINOv3 features.

`probe` sweeps a grid of linear heads (learning rate x weight decay x feature choice) in one pass over
in-memory features and keeps the best one by validation score; `knn` is the training-free
temperature-weighted k-nearest-neighbour classifier of the DINO evaluations.
"""
