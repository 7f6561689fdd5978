"""Losses of the SSL methods."""

from .ntxent import NTXentLoss
