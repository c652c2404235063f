"""What the tests share: one clock, one waiter, builders, processes, brokers."""
