"""The store contract: what every backend must do, proven against each of them."""
