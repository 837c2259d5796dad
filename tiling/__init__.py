"""slidestream.tiling"""
