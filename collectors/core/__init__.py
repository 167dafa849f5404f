"""What every collector shares: the reading and quality model, config types, the hand-off."""
