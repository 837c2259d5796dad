"""slidestream.stain"""
