"""Collaborative multi-robot SLAM exploration: the pure simulation part."""
