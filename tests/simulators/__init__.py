"""Simulators, brokers and the loss checker."""
