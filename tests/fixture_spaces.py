"""Search-space files shared by the storage and bad-input tests."""

# Two architectures only: after the first two trials every measurement comes from
# the nas_measurements cache, so a trial is a few storage round trips and one
# training step -- as much write contention per second as a search can make.
TWO_ARCH_SPACE = """
name = "two"
description = "two one-layer architectures, for storage tests"
[model]
d_model = [16]
depth = [1]
[layer]
attention = ["full", "linear"]
heads = [1]
ffn_mult = [2]
"""
