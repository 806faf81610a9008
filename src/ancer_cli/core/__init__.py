"""The mathematics of randomized smoothing on tensors: noise, votes, bounds, radii, regions.

Nothing here touches files or the terminal; device and dtype come from the inputs.
"""
