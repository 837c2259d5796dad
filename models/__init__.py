"""slidestream.models"""
