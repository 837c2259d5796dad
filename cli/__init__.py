"""slidestream.cli"""
