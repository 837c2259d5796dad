"""slidestream.mil"""
