"""Model adapters: each turns cases into sample images, paired with their reference case."""
