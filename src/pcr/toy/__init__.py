"""The toy world of coloured shapes, and the training of the toy text-to-image model and toy CLIP."""
