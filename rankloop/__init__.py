"""rankloop: RLHF end to end — K-way human rankings, reward models, PPO with a KL penalty,
and the labeling app that closes the loop."""

__version__ = "0.1.0"
