"""placeholder while being written"""
