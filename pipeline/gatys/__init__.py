"""The algorithm of Gatys et al. (2016): trunk, weights, losses, optimizer, engine."""
