"""Packaging lives in setup.cfg; this file lets `pip install -e .` work with old pips."""

from setuptools import setup

setup()
